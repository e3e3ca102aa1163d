#!/usr/bin/env bash
# The gateway package: build the .deb from [package.metadata.deb] in Cargo.toml, install it
# with dpkg, check what it put in place (files, conffile, users, enabled-not-started
# service), reinstall over an edited config, then purge and check nothing is left.
# Runs as root on a Debian machine; it really installs and purges the package here.
#
# Installs (apt): dpkg-dev (dpkg-shlibdeps, for the package's Depends); cargo-deb from
# crates.io when missing. DEB_BUILDER=dpkg-deb skips cargo-deb and assembles the same
# package from the same metadata with dpkg-deb (also the fallback when cargo-deb cannot
# be installed).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive CARGO_TERM_COLOR=never
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
PKG=leap-edge

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
check() { local what=$1; shift; if "$@"; then echo "ok: $what"; else fail "$what"; fi; }

step "system packages"
if ! command -v dpkg-shlibdeps >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends dpkg-dev >/dev/null
fi

builder=${DEB_BUILDER:-cargo-deb}
if [[ $builder == cargo-deb ]] && ! cargo deb --version >/dev/null 2>&1; then
  step "cargo install cargo-deb"
  t0=$SECONDS
  # Its own temporary target folder: a shared CARGO_TARGET_DIR would stay locked meanwhile.
  if env -u CARGO_TARGET_DIR cargo install cargo-deb --locked; then
    echo "cargo-deb installed in $((SECONDS - t0)) s"
  else
    echo "cargo-deb could not be installed: building with dpkg-deb instead"
    builder=dpkg-deb
  fi
fi

step "build the .deb ($builder)"
if [[ $builder == cargo-deb ]]; then
  deb=$(cargo deb --output "$TARGET_DIR/debian/" | tail -1)
else
  cargo build --release --locked
  deb=$(python3 ci/deb_from_metadata.py "$TARGET_DIR")
fi
[[ -f $deb ]] || fail "no package at '$deb'"
ls -l "$deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
dpkg-deb --contents "$deb"

step "install"
if dpkg-query -W "$PKG" >/dev/null 2>&1; then dpkg --purge "$PKG" >/dev/null; fi
dpkg -i "$deb"
check "binary runs" /usr/bin/leap-edge --version
for f in /usr/lib/systemd/system/leap-edge.service /usr/lib/systemd/system/leap-edge-tunnel.service \
         /usr/lib/sysusers.d/leap-edge.conf /usr/lib/tmpfiles.d/leap-edge.conf \
         /usr/share/leap-edge/devices/sunspec.toml /usr/share/doc/leap-edge/tunnel.env.example; do
  check "$f installed" test -f "$f"
done
check "config.toml is a conffile" \
  bash -c "dpkg-query -W -f='\${Conffiles}' $PKG | grep -q '/etc/leap-edge/config.toml'"
check "users leap-edge and leap-edge-tunnel exist" \
  bash -c 'getent passwd leap-edge && getent passwd leap-edge-tunnel && getent group leap-edge' >/dev/null
check "config.toml is root:leap-edge 0640" \
  test "$(stat -c '%U:%G %a' /etc/leap-edge/config.toml)" = "root:leap-edge 640"
check "config ownership is a dpkg stat override (survives conffile updates)" \
  bash -c 'dpkg-statoverride --list /etc/leap-edge/config.toml | grep -q "root leap-edge 640"'
check "state dir is leap-edge 0750" \
  test "$(stat -c '%U:%G %a' /var/lib/leap-edge)" = "leap-edge:leap-edge 750"
check "service enabled at boot" test -L /etc/systemd/system/multi-user.target.wants/leap-edge.service
check "tunnel not enabled" test ! -e /etc/systemd/system/multi-user.target.wants/leap-edge-tunnel.service
if [[ -d /run/systemd/system ]]; then
  check "daemon not started" bash -c '! systemctl is-active --quiet leap-edge.service'
else
  check "daemon not started" bash -c '! pgrep -f "^/usr/bin/leap-edge run" >/dev/null'
fi
# Unconfigured on purpose: the daemon would refuse to start (exit 78, no restart loop).
set +e
out=$(/usr/bin/leap-edge config check --config /etc/leap-edge/config.toml 2>&1); rc=$?
set -e
echo "$out"
check "shipped config is refused until configured (exit 78, names auth.keys)" \
  bash -c "[[ $rc == 78 ]] && grep -q 'auth.keys' <<<\"\$0\"" "$out"
check "shipped unit passes systemd-analyze verify" \
  systemd-analyze verify /usr/lib/systemd/system/leap-edge.service

step "reinstall over an edited config (upgrade path)"
echo "# edited by the technician" >>/etc/leap-edge/config.toml
dpkg -i "$deb"
check "technician's edit kept" grep -q "edited by the technician" /etc/leap-edge/config.toml
check "still enabled" test -L /etc/systemd/system/multi-user.target.wants/leap-edge.service
check "config still root:leap-edge 0640" \
  test "$(stat -c '%U:%G %a' /etc/leap-edge/config.toml)" = "root:leap-edge 640"

step "purge"
touch /var/lib/leap-edge/leap-edge.db
dpkg --purge "$PKG"
check "package gone" bash -c "! dpkg-query -W -f='\${Status}' $PKG 2>/dev/null | grep -q installed"
for f in /usr/bin/leap-edge /usr/lib/systemd/system/leap-edge.service /usr/share/leap-edge \
         /etc/leap-edge /var/lib/leap-edge /usr/lib/sysusers.d/leap-edge.conf \
         /usr/lib/systemd/system/leap-edge-relay.service /etc/leap-edge-relay /var/lib/leap-edge-relay \
         /etc/systemd/system/multi-user.target.wants/leap-edge.service; do
  check "$f removed" test ! -e "$f" -a ! -L "$f"
done
check "stat overrides removed" bash -c '! dpkg-statoverride --list "/etc/leap-edge*" | grep -q .'
echo "(system users leap-edge and leap-edge-tunnel are kept after purge, as Debian does)"

step "done: $deb"
