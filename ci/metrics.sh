#!/usr/bin/env bash
# /metrics (on the loopback metrics listener) is valid Prometheus text: run the daemon (with the simulator) on a throwaway
# config, move a battery once, and feed the exposition to `promtool check metrics`.
# Installs (apt): prometheus (for promtool), curl.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if ! command -v promtool >/dev/null; then
  apt-get install -y -qq --no-install-recommends prometheus curl >/dev/null
fi
bin=${LEAP_EDGE_BIN:-target/debug/leap-edge}
[ -x "$bin" ] || cargo build -q
dir=$(mktemp -d)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
sed -e "s#^devices_dir = .*#devices_dir = \"$PWD/devices\"#" \
    -e 's#^listen = "127.0.0.1:8443"#listen = "127.0.0.1:18443"#' \
    -e 's#^metrics_listen = "127.0.0.1:9464"#metrics_listen = "127.0.0.1:19464"#' \
    -e 's#^listen = "127.0.0.1:1502"#listen = "127.0.0.1:11502"#' \
    -e 's#^port = 1502#port = 11502#' config.toml > "$dir/config.toml"
"$bin" --config "$dir/config.toml" run 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do curl -fs 127.0.0.1:19464/healthz >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" --config "$dir/config.toml" send-test --in 1s --duration 3s >/dev/null
sleep 3
curl -fs 127.0.0.1:19464/metrics > "$dir/metrics"
promtool check metrics < "$dir/metrics"
grep -q '^leap_edge_soc_percent' "$dir/metrics"
grep -q '^leap_edge_webhook_requests_total{result="accepted"} 1' "$dir/metrics"
echo "metrics: promtool accepts $(grep -vc '^#' "$dir/metrics") samples"
