#!/usr/bin/env bash
# The package under a real systemd: boot this machine's own OS (read-only beneath a
# throwaway overlay) in a systemd-nspawn container with a private network, install the .deb
# there, configure it, and check what systemd does with leap-edge.service and its sandbox:
# Type=notify start (READY=1), a request stored through the listener, the technician's CLI
# through the admin socket, reload, watchdog pings, a watchdog restart of a hung daemon,
# and a clean stop. Inside steps: ci/systemd-inside.sh.
#
# Installs (apt): systemd-container. Needs root and the .deb: DEB=path, or the newest
# ${CARGO_TARGET_DIR:-target}/debian/leap-edge_*.deb (ci/deb.sh builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

step "system packages"
if ! command -v systemd-nspawn >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends systemd-container >/dev/null
fi

deb=${DEB:-$(ls -t "${CARGO_TARGET_DIR:-target}"/debian/leap-edge_*.deb 2>/dev/null | head -1)}
[[ -f $deb ]] || { echo "no .deb: run ci/deb.sh first or set DEB" >&2; exit 1; }
echo "package: $deb"

work=$(mktemp -d)
cleanup() {
  mountpoint -q "$work/root" && umount "$work/root"
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work"/{upper,ovl,root,res,test}
# Writes inside the container land in $work/upper and vanish with it.
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/ovl" "$work/root"
cp "$deb" "$work/test/leap-edge.deb"
cp ci/systemd-inside.sh "$work/test/inside.sh"
cp tests/fixtures/leap-sample-meter.json "$work/test/sample.json"
cat >"$work/test/leap-edge-test.service" <<'EOF'
[Unit]
Description=leap-edge package test (ci/systemd-inside.sh)
After=basic.target
[Service]
Type=oneshot
ExecStart=/bin/bash /test/inside.sh
ExecStopPost=/bin/systemctl poweroff --no-block
EOF

step "boot the container"
set +e
timeout 600 systemd-nspawn -q -D "$work/root" --private-network --register=no --keep-unit \
  --bind="$work/res:/res" --bind-ro="$work/test:/test" \
  --bind-ro="$work/test/leap-edge-test.service:/etc/systemd/system/leap-edge-test.service" \
  -b -- systemd.unit=leap-edge-test.service >"$work/boot.log" 2>&1
nspawn_rc=$?
set -e
cat "$work/res/log" 2>/dev/null || { echo "no test log; boot log:"; tail -40 "$work/boot.log"; }
rc=$(cat "$work/res/rc" 2>/dev/null || echo "none")
if [[ $rc != 0 ]]; then
  echo "FAIL: inside test exit status $rc (nspawn $nspawn_rc)" >&2
  exit 1
fi
step "done"
