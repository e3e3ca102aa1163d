#!/usr/bin/env bash
# The reverse tunnel, end to end on loopback:
#   1. a throwaway "relay": sshd on 127.0.0.1 with its own host key, and the gateway's
#      throwaway public key in authorized_keys restricted as tunnel.env.example says;
#   2. the tunnel: the ExecStart line of systemd/leap-edge-tunnel.service, run as systemd
#      would run it (its EnvironmentFile format, its Environment=, %d = the credentials
#      folder), with an env file made from systemd/tunnel.env.example;
#   3. the gateway: `leap-edge run` listening on port G (plain HTTP on loopback);
#   4. a Leap-shaped notification POSTed to the relay-side port R must show up in
#      `leap-edge events --json`;
#   5. the relay drops the SSH connection; autossh must bring the tunnel back, and a second
#      notification must arrive too;
#   6. the fleet (SPEC §2.12): two more gateways, each behind its own reverse tunnel (own key,
#      own permitlisten port), and `leap-edge relay run` in front of both on the relay host.
#      One notification with a meter of each site and a group spanning both, POSTed to the
#      relay, must reach both gateways, each storing exactly its own entries.
# Without a `leap-edge run` in the binary (or with TUNNEL_BACKEND=python) a small Python HTTP
# server stands in for the daemon on G and the check is that it received the POST.
#
# Installs (apt): openssh-server openssh-client autossh curl.
# Environment: LEAP_EDGE_BIN (default: build with cargo, debug profile).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
UNIT=$REPO/systemd/leap-edge-tunnel.service
export DEBIAN_FRONTEND=noninteractive CARGO_TERM_COLOR=never

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
fail() { echo "FAIL: $*" >&2; for l in "$work"/*.log; do echo "--- $l"; tail -20 "$l"; done >&2; exit 1; }

step "system packages"
need=()
for p in openssh-server openssh-client autossh curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [[ -z ${LEAP_EDGE_BIN:-} ]]; then
  step "build leap-edge"
  cargo build --locked
  LEAP_EDGE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/leap-edge"
fi
backend=daemon
if [[ ${TUNNEL_BACKEND:-} == python ]] || ! "$LEAP_EDGE_BIN" run --help >/dev/null 2>&1; then
  backend=python
fi

work=$(mktemp -d)
chmod 755 "$work"
groups=()
cleanup() {
  # Each process was started as the leader of its own process group: end those groups.
  local g
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${groups[@]}"; do
    for _ in $(seq 50); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$g" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
# Start "$@" in a new session (own process group), output to $work/NAME.log.
spawn() { local name=$1; shift; setsid "$@" >"$work/$name.log" 2>&1 & groups+=($!); }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # wait_port PORT WHAT: until something accepts TCP connections there
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  fail "$2: nothing listens on 127.0.0.1:$1 after 30 s"
}
port_closed() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

SSH_PORT=$(free_port)
R=$(free_port)
G=$(free_port)
echo "relay sshd 127.0.0.1:$SSH_PORT, relay-side port R=$R, gateway port G=$G, backend: $backend"

step "relay: sshd with a throwaway host key"
mkdir -p "$work/relay" "$work/etc" "$work/gw" /run/sshd
ssh-keygen -q -t ed25519 -N '' -C relay-host -f "$work/relay/host_key"
ssh-keygen -q -t ed25519 -N '' -C gw-test -f "$work/etc/tunnel_key"
printf 'restrict,port-forwarding,permitlisten="127.0.0.1:%s" %s\n' "$R" \
  "$(cat "$work/etc/tunnel_key.pub")" >"$work/relay/authorized_keys"
cat >"$work/relay/sshd_config" <<EOF
ListenAddress 127.0.0.1:$SSH_PORT
HostKey $work/relay/host_key
PidFile $work/relay/sshd.pid
AuthorizedKeysFile $work/relay/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding remote
GatewayPorts no
X11Forwarding no
PermitTTY no
ClientAliveInterval 5
LogLevel VERBOSE
EOF
spawn sshd /usr/sbin/sshd -D -e -f "$work/relay/sshd_config"
wait_port "$SSH_PORT" sshd
echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$work/relay/host_key.pub")" >"$work/etc/tunnel_known_hosts"
chmod 600 "$work/etc/tunnel_key" "$work/etc/tunnel_known_hosts"

step "gateway: $backend on port $G"
notes=$work/gw/received
if [[ $backend == daemon ]]; then
  cfg=$work/gw/config.toml
  cat >"$cfg" <<EOF
devices_dir = "$REPO/devices"
[server]
listen = "127.0.0.1:$G"
metrics_listen = "127.0.0.1:0"
path = "/leap/dispatch"
[auth]
header = "x-api-key"
keys = ["tunnel-test-key-0123456789abcdefghij"]
[storage]
path = "$work/gw/leap-edge.db"
[admin]
socket = "$work/gw/admin.sock"
EOF
  "$LEAP_EDGE_BIN" config check --config "$cfg" >/dev/null
  spawn daemon "$LEAP_EDGE_BIN" run --config "$cfg"
else
  # Stands in for the daemon: answers 200 JSON to an authorised POST and keeps the bodies.
  spawn daemon python3 -c '
import http.server, sys
port, out = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        ok = self.path == "/leap/dispatch" and self.headers["x-api-key"] == "tunnel-test-key-0123456789abcdefghij"
        if ok:
            with open(out, "ab") as f: f.write(body + b"\n")
        self.send_response(200 if ok else 401)
        self.send_header("content-type", "application/json"); self.end_headers()
        self.wfile.write(b"{\"stored\": true}" if ok else b"{}")
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
' "$G" "$notes"
fi
wait_port "$G" "gateway ($backend)"

step "tunnel: ExecStart of $(basename "$UNIT")"
# The tunnel.env a technician writes: the shipped example with this test's values.
sed -e "s/^RELAY_HOST=.*/RELAY_HOST=127.0.0.1/" -e "s/^RELAY_SSH_PORT=.*/RELAY_SSH_PORT=$SSH_PORT/" \
    -e "s/^RELAY_USER=.*/RELAY_USER=$(id -un)/" -e "s/^RELAY_BIND=.*/RELAY_BIND=127.0.0.1/" \
    -e "s/^RELAY_PORT=.*/RELAY_PORT=$R/" -e "s/^GATEWAY_HOST=.*/GATEWAY_HOST=127.0.0.1/" \
    -e "s/^GATEWAY_PORT=.*/GATEWAY_PORT=$G/" systemd/tunnel.env.example >"$work/etc/tunnel.env"
mapfile -d '' cmd < <(python3 ci/unit_exec.py "$UNIT" /etc/leap-edge="$work/etc" "$work/creds")
printf '%q ' "${cmd[@]}"; echo
check_port_r_closed() { port_closed "$R" || fail "port R=$R is open before the tunnel is up"; }
check_port_r_closed
spawn tunnel "${cmd[@]}"
wait_port "$R" "relay side of the tunnel"

post() { # post EVENT_ID: a Leap-shaped notification to the relay-side port
  python3 - "$1" >"$work/note.json" <<'EOF'
import json, sys, datetime as dt
start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(hours=2)
fmt = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps({
    "integration_test_notification": False, "communication_test": False,
    "meter_dispatches": [{"meter_id": "7d0f6c52-3a59-4c61-9d55-0c7f2b1e9a01", "timeslots": [{
        "meter_event_id": sys.argv[1], "start_time": fmt(start),
        "end_time": fmt(start + dt.timedelta(hours=1)), "cancelled": False,
        "performance_compensation_cap": "up-to-site-load", "priority": 1,
        "is_voluntary": False, "dispatch_event_types": ["day-ahead"], "programs": ["DRAM"],
        "energy_kw": 10.0}]}],
    "market_group_dispatches": []}))
EOF
  local code
  code=$(curl -sS -o "$work/reply.json" -w '%{http_code}' --max-time 30 \
    -H 'x-api-key: tunnel-test-key-0123456789abcdefghij' -H 'content-type: application/json' \
    --data-binary "@$work/note.json" "http://127.0.0.1:$R/leap/dispatch")
  [[ $code == 200 ]] || fail "POST through the tunnel answered $code: $(cat "$work/reply.json")"
  echo "POST via 127.0.0.1:$R -> 200 $(head -c 200 "$work/reply.json")"
}
stored() { # stored EVENT_ID: the gateway has it
  if [[ $backend == daemon ]]; then
    "$LEAP_EDGE_BIN" events --json --config "$cfg" | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if any(sys.argv[1] in json.dumps(t) for t in d["timeslots"]) else 1)' "$1"
  else
    grep -q "$1" "$notes"
  fi
}

step "POST to the relay-side port, see it stored"
id1=$(python3 -c 'import uuid; print(uuid.uuid4())')
post "$id1"
stored "$id1" || fail "event $id1 not stored on the gateway"
echo "ok: event $id1 stored"

step "relay drops the connection; autossh reconnects"
# The relay's per-connection sshd processes are the listener's children.
sshd_pid=$(cat "$work/relay/sshd.pid")
sessions=$(pgrep -P "$sshd_pid") || fail "no SSH session on the relay"
kill -TERM $sessions
for _ in $(seq 100); do port_closed "$R" && break; sleep 0.1; done
port_closed "$R" || fail "port R still open after the relay dropped the session"
echo "tunnel down; waiting for autossh"
wait_port "$R" "tunnel after reconnect"
id2=$(python3 -c 'import uuid; print(uuid.uuid4())')
post "$id2"
stored "$id2" || fail "event $id2 not stored after reconnect"
echo "ok: event $id2 stored after reconnect"

if [[ $backend == daemon ]]; then
  step "fleet: two gateways behind their own tunnels, leap-edge relay in front"
  FLEET_KEY=fleet-gateway-key-0123456789abcdef-01
  start_site() { # start_site N: gateway daemon N on its own port, its tunnel to relay port
    local n=$1 gp rp dir=$work/site$1
    gp=$(free_port); rp=$(free_port)
    mkdir -p "$dir/etc"
    cat >"$dir/config.toml" <<EOF
devices_dir = "$REPO/devices"
[server]
listen = "127.0.0.1:$gp"
metrics_listen = "127.0.0.1:0"
path = "/leap/dispatch"
[auth]
keys = ["$FLEET_KEY"]
[storage]
path = "$dir/leap-edge.db"
[admin]
socket = "$dir/admin.sock"
EOF
    spawn "site$n" "$LEAP_EDGE_BIN" run --config "$dir/config.toml"
    wait_port "$gp" "gateway site$n"
    ssh-keygen -q -t ed25519 -N '' -C "gw-site$n" -f "$dir/etc/tunnel_key"
    printf 'restrict,port-forwarding,permitlisten="127.0.0.1:%s" %s\n' "$rp" \
      "$(cat "$dir/etc/tunnel_key.pub")" >>"$work/relay/authorized_keys"
    cp "$work/etc/tunnel_known_hosts" "$dir/etc/"
    chmod 600 "$dir/etc/tunnel_key" "$dir/etc/tunnel_known_hosts"
    sed -e "s/^RELAY_HOST=.*/RELAY_HOST=127.0.0.1/" -e "s/^RELAY_SSH_PORT=.*/RELAY_SSH_PORT=$SSH_PORT/" \
        -e "s/^RELAY_USER=.*/RELAY_USER=$(id -un)/" -e "s/^RELAY_BIND=.*/RELAY_BIND=127.0.0.1/" \
        -e "s/^RELAY_PORT=.*/RELAY_PORT=$rp/" -e "s/^GATEWAY_HOST=.*/GATEWAY_HOST=127.0.0.1/" \
        -e "s/^GATEWAY_PORT=.*/GATEWAY_PORT=$gp/" systemd/tunnel.env.example >"$dir/etc/tunnel.env"
    mapfile -d '' tcmd < <(python3 ci/unit_exec.py "$UNIT" /etc/leap-edge="$dir/etc" "$dir/creds")
    spawn "tunnel$n" "${tcmd[@]}"
    wait_port "$rp" "tunnel of site$n"
    printf -v "SITE${n}_RELAY_PORT" '%s' "$rp"
  }
  start_site 2
  start_site 3
  RL=$(free_port); RM=$(free_port)
  RELAY_KEY=fleet-relay-key-for-leap-0123456789abcdef
  cat >"$work/relay/relay.toml" <<EOF
[server]
listen = "127.0.0.1:$RL"
path = "/leap/dispatch"
[auth]
keys = ["$RELAY_KEY"]
[storage]
path = "$work/relay/relay.db"
[relay]
metrics_listen = "127.0.0.1:$RM"
[[gateways]]
name = "site2"
url = "http://127.0.0.1:$SITE2_RELAY_PORT/leap/dispatch"
key = "$FLEET_KEY"
meters = ["m-site2"]
[[gateways]]
name = "site3"
url = "http://127.0.0.1:$SITE3_RELAY_PORT/leap/dispatch"
key = "$FLEET_KEY"
meters = ["m-site3"]
EOF
  "$LEAP_EDGE_BIN" --config "$work/relay/relay.toml" relay check
  spawn relay "$LEAP_EDGE_BIN" --config "$work/relay/relay.toml" relay run
  wait_port "$RL" "leap-edge relay"
  python3 - >"$work/fleet.json" <<'EOF'
import json
from datetime import datetime, timedelta, timezone
# A week ahead at midnight UTC: inside the gateways' [limits] max_start_ahead_days (31).
day = (datetime.now(timezone.utc) + timedelta(days=7)).strftime("%Y-%m-%d")
slot = lambda kind, i: {f"{kind}_event_id": i, "start_time": f"{day}T00:00:00Z",
    "end_time": f"{day}T01:00:00Z", "cancelled": False,
    "performance_compensation_cap": "up-to-site-load", "priority": 1, "is_voluntary": False,
    "dispatch_event_types": ["standard"], "programs": ["DRAM"], "energy_kw": 4.0}
print(json.dumps({"integration_test_notification": False, "communication_test": False,
    "meter_dispatches": [{"meter_id": "m-site2", "timeslots": [slot("meter", "fleet-m2")]},
                         {"meter_id": "m-site3", "timeslots": [slot("meter", "fleet-m3")]}],
    "group_dispatches": [{"market_group_id": "g", "meter_ids": ["m-site2", "m-site3"],
                          "timeslots": [slot("market_group", "fleet-g")]}]}))
EOF
  code=$(curl -sS -o "$work/reply.json" -w '%{http_code}' --max-time 30 \
    -H "x-api-key: $RELAY_KEY" -H 'content-type: application/json' \
    --data-binary "@$work/fleet.json" "http://127.0.0.1:$RL/leap/dispatch")
  [[ $code == 200 ]] || fail "POST to the relay answered $code: $(cat "$work/reply.json")"
  echo "POST to the relay -> 200 $(cat "$work/reply.json")"
  events_of() { # events_of N: the event ids site N stored, sorted, space-separated
    "$LEAP_EDGE_BIN" events --json --config "$work/site$1/config.toml" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join(sorted(t.get("meter_event_id") or t.get("market_group_event_id") for t in d["timeslots"])))'
  }
  for _ in $(seq 300); do
    [[ $(events_of 2) == "fleet-g fleet-m2" && $(events_of 3) == "fleet-g fleet-m3" ]] && break
    sleep 0.1
  done
  [[ $(events_of 2) == "fleet-g fleet-m2" ]] || fail "site2 has [$(events_of 2)], want [fleet-g fleet-m2]"
  [[ $(events_of 3) == "fleet-g fleet-m3" ]] || fail "site3 has [$(events_of 3)], want [fleet-g fleet-m3]"
  "$LEAP_EDGE_BIN" --config "$work/relay/relay.toml" relay status
  echo "ok: each gateway stored exactly its own entries through its own tunnel"
fi

step "done (backend: $backend)"
