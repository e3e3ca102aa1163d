#!/bin/bash
# Runs inside the systemd-nspawn container of ci/systemd.sh, as a oneshot unit under a real
# systemd (PID 1). Writes its log to /res/log and its exit status to /res/rc.
set -euo pipefail
exec >/res/log 2>&1
trap 'echo $? >/res/rc' EXIT

step() { printf '\n-- %s (%ss)\n' "$*" "$SECONDS"; }
fail() {
  echo "FAIL: $*"
  journalctl -u leap-edge -u leap-edge-tunnel --no-pager -n 60 || true
  exit 1
}
check() { local what=$1; shift; if "$@"; then echo "ok: $what"; else fail "$what"; fi; }
prop() { systemctl show -P "$1" leap-edge.service; }
CFG=/etc/leap-edge/config.toml
KEY=systemd-test-key-0123456789abcdefghij

step "install the package"
# As on a gateway: D-Bus up, so the daemon's clock check (timedatectl) can ask timedated.
systemctl start dbus.socket || true
dpkg -i /test/leap-edge.deb
check "enabled, not started" bash -c \
  '[[ $(systemctl is-enabled leap-edge) == enabled ]] && ! systemctl is-active -q leap-edge'

step "unconfigured: refused without a restart loop"
if systemctl start leap-edge 2>/dev/null; then fail "started with the shipped (empty) config"; fi
sleep 2
check "exit 78 stops restarts" bash -c \
  "[[ \$(systemctl show -P ExecMainStatus leap-edge) == 78 && \$(systemctl show -P NRestarts leap-edge) == 0 ]]"
systemctl reset-failed leap-edge

step "configure (API key; plain HTTP on loopback instead of TLS for the test)"
sed -i -e '/^\[server.tls\]/,/^key = /d' -e "s/^keys = \[\]/keys = [\"$KEY\"]/" "$CFG"
leap-edge config check --config "$CFG"

check "config check, run as root, speaks for the service user" bash -c \
  "chmod 0600 $CFG; out=\$(leap-edge config check 2>&1); rc=\$?; chmod 0640 $CFG; echo \"\$out\" | tail -2; \
   [[ \$rc == 78 ]] && grep -q 'service user leap-edge cannot read' <<<\"\$out\""
leap-edge config check --config "$CFG"

step "start: Type=notify returns once READY=1 arrived"
systemctl start leap-edge
check "active" systemctl is-active -q leap-edge
echo "MainPID=$(prop MainPID) WatchdogUSec=$(prop WatchdogUSec) User=$(prop User)"
check "runs as leap-edge" bash -c "[[ \$(ps -o user= -p $(prop MainPID)) == leap-edge ]]"
check "database in the state directory" test -f /var/lib/leap-edge/leap-edge.db
check "admin socket in the runtime directory" test -S /run/leap-edge/admin.sock
check "the configuration it runs with is kept for the release after a stop" \
  grep -q '^\[server\]' /run/leap-edge/running-config.toml

step "a Leap notification through the listener"
code=$(curl -sS -o /tmp/reply -w '%{http_code}' -H "x-api-key: $KEY" \
  -H 'content-type: application/json' --data-binary @/test/sample.json \
  http://127.0.0.1:8443/leap/dispatch) || true
cat /tmp/reply; echo
check "200 after storing" test "$code" = 200

step "a technician in group leap-edge uses the CLI"
useradd -m -G leap-edge tech
status=$(runuser -u tech -- leap-edge status --json --config "$CFG")
check "status sees the daemon over the admin socket" grep -q '"daemon": "running"' <<<"$status"
echo "clock as the sandboxed daemon sees it: $(grep -o '"clock[a-z_]*": [a-z]*' <<<"$status" | head -1)"
events=$(runuser -u tech -- leap-edge events --json --config "$CFG")
check "events shows the stored timeslot" grep -q 11cfced0-16f4-4fb7-b72e-5ff939ae541e <<<"$events"
check "someone outside the group cannot read the config" bash -c \
  "useradd -m other && ! runuser -u other -- cat $CFG 2>/dev/null"
check "and the CLI tells them to join the group" bash -c \
  "runuser -u other -- leap-edge status --config $CFG 2>&1 | grep -q 'usermod -aG leap-edge'"

step "reload"
runuser -u tech -- leap-edge reload --config "$CFG"
check "the audit names the technician's uid, not the namespace's 65534" bash -c \
  "for i in \$(seq 20); do journalctl -u leap-edge -o verbose --no-pager | grep -Eq '^ *(F_)?PEER_UID=$(id -u tech)\$' && exit 0; sleep 0.5; done; exit 1"
check "systemctl reload" systemctl reload leap-edge
check "still active" systemctl is-active -q leap-edge

step "watchdog pings arrive"
t1=$(prop WatchdogTimestampMonotonic); sleep 3; t2=$(prop WatchdogTimestampMonotonic)
check "WATCHDOG=1 seen within 3 s ($t1 -> $t2)" test "$t2" -gt "$t1"

step "a hung daemon is killed by the watchdog and restarted"
mkdir -p /run/systemd/system/leap-edge.service.d
printf '[Service]\nWatchdogSec=3\n' >/run/systemd/system/leap-edge.service.d/fast-watchdog.conf
systemctl daemon-reload
systemctl restart leap-edge
pid=$(prop MainPID)
kill -STOP "$pid"
for _ in $(seq 60); do
  [[ $(prop NRestarts) -ge 1 ]] && systemctl is-active -q leap-edge && break
  sleep 0.5
done
check "restarted after the watchdog fired (result was: $(journalctl -u leap-edge --no-pager | grep -c 'Watchdog timeout') timeout log line)" \
  bash -c "[[ \$(systemctl show -P NRestarts leap-edge) -ge 1 && \$(systemctl show -P MainPID leap-edge) != $pid ]]"
rm -r /run/systemd/system/leap-edge.service.d
systemctl daemon-reload

step "the tunnel unit: relay sshd on loopback, leap-edge-tunnel.service, POST via the relay"
if command -v autossh >/dev/null && test -x /usr/sbin/sshd; then
  mkdir -p /run/sshd /etc/relay
  useradd -m relay && usermod -p '*' relay   # no password, but not locked (sshd without PAM refuses '!')
  ssh-keygen -q -t ed25519 -N '' -f /etc/relay/host_key
  ssh-keygen -q -t ed25519 -N '' -C gw-test -f /etc/leap-edge/tunnel_key
  printf 'restrict,port-forwarding,permitlisten="127.0.0.1:9443" %s\n' \
    "$(cat /etc/leap-edge/tunnel_key.pub)" >/etc/relay/authorized_keys
  printf '%s\n' "ListenAddress 127.0.0.1:2222" "HostKey /etc/relay/host_key" \
    "AuthorizedKeysFile /etc/relay/authorized_keys" "PasswordAuthentication no" \
    "AllowTcpForwarding remote" "PermitTTY no" "UsePAM no" "PidFile /run/relay-sshd.pid" \
    >/etc/relay/sshd_config
  /usr/sbin/sshd -f /etc/relay/sshd_config
  echo "[127.0.0.1]:2222 $(cut -d' ' -f1,2 /etc/relay/host_key.pub)" >/etc/leap-edge/tunnel_known_hosts
  chmod 600 /etc/leap-edge/tunnel_key /etc/leap-edge/tunnel_known_hosts
  check "status: the tunnel is not configured yet" bash -c \
    "leap-edge --config $CFG status 2>&1 | grep -q 'reverse tunnel: not configured'"
  sed -e 's/^RELAY_HOST=.*/RELAY_HOST=127.0.0.1/' -e 's/^RELAY_SSH_PORT=.*/RELAY_SSH_PORT=2222/' \
      -e 's/^RELAY_USER=.*/RELAY_USER=relay/' \
      /usr/share/doc/leap-edge/tunnel.env.example >/etc/leap-edge/tunnel.env
  systemctl start leap-edge-tunnel
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9443) 2>/dev/null && break; sleep 0.2; done
  check "tunnel runs as leap-edge-tunnel" bash -c \
    "[[ \$(ps -o user= -p \$(systemctl show -P MainPID leap-edge-tunnel)) == leap-edge-tunnel ]]"
  code=$(curl -sS -o /tmp/reply -w '%{http_code}' -H "x-api-key: $KEY" \
    -H 'content-type: application/json' --data-binary @/test/sample.json \
    http://127.0.0.1:9443/leap/dispatch) || true
  cat /tmp/reply; echo
  check "POST to the relay's port 9443 reaches the daemon (200)" test "$code" = 200
  sleep 11   # status calls an ssh connected once it has kept its forward 10 s
  leap-edge --config $CFG status 2>&1 | grep 'reverse tunnel' || true
  check "status: the tunnel is up with its ssh connected" bash -c \
    "leap-edge --config $CFG status 2>&1 | grep -q 'reverse tunnel: up (ssh connected'"
  journalctl -u leap-edge-tunnel --no-pager -o cat | tail -5
  systemctl stop leap-edge-tunnel
  kill "$(cat /run/relay-sshd.pid)"
else
  echo "SKIPPED: autossh or sshd not installed on this machine (ci/tunnel.sh installs them)"
fi

step "upgrade: restarted on the new binary only with a configuration it accepts"
# A build image's policy-rc.d (exit 101) forbids maintainer scripts to restart services;
# a gateway has none.
if [[ -e /usr/sbin/policy-rc.d ]]; then mv /usr/sbin/policy-rc.d /usr/sbin/policy-rc.d.off; fi
pid=$(prop MainPID)
cp "$CFG" /tmp/config.good
echo 'no_such_key = 1' >>"$CFG"
out=$(dpkg -i /test/leap-edge.deb 2>&1) || fail "dpkg -i: $out"
echo "$out" | tail -4
check "a refused configuration leaves the running daemon (pid $pid) in place" bash -c \
  "[[ \$(systemctl show -P MainPID leap-edge) == $pid ]] && systemctl is-active -q leap-edge"
check "and the upgrade says why" grep -q "NOT restarting leap-edge.service" <<<"$out"
cp /tmp/config.good "$CFG"
dpkg -i /test/leap-edge.deb >/dev/null 2>&1
check "an accepted configuration restarts it on the new binary" bash -c \
  "[[ \$(systemctl show -P MainPID leap-edge) != $pid ]] && systemctl is-active -q leap-edge"

step "stop"
systemctl stop leap-edge
check "stopped cleanly" bash -c "[[ \$(systemctl show -P Result leap-edge) == success ]] && ! systemctl is-active -q leap-edge"
journalctl -u leap-edge --no-pager -o cat | grep -iE "denied|EPERM|not permitted" && fail "sandbox denials in the log"
echo "no sandbox denials in the journal"
journalctl -u leap-edge --no-pager -o cat | grep "reception only permitted" &&
  fail "a child process wrote to the notify socket"
echo "no foreign notify messages"

step "security rating of the installed unit"
systemd-analyze security leap-edge.service --no-pager | tail -1
echo "inside test passed"
