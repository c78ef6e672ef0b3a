#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian 12 machine (as root), then run it.
# Used as is by CI (.ci/run). Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-pip
  # the agent's runtime dependencies, Debian's versions (the .deb uses these)
  python3-psutil python3-pyudev python3-systemd python3-cryptography
  # what the collectors read or run, and the tests' real tools
  dmidecode pciutils usbutils hwdata tar gzip iproute2
  i2c-tools  # decode-dimms: the JEDEC manufacturer table is checked against it
  # the registry's tests: a real PostgreSQL, the finder in headless Chromium, the form's QR code
  postgresql chromium poppler-utils zbar-tools
  # the console in headless Chromium driven by Selenium
  chromium-driver python3-selenium
  # the delivery tests: the VPN path over WireGuard between network namespaces (userspace)
  wireguard-go wireguard-tools
  # the registry's vpn-sync: a real OpenVPN server's status file (tests/registry/test_vpn_openvpn.py)
  openvpn
  # benchmarks (bench/): GNU time, and the tools evo-agent is compared with
  time hyperfine lshw inxi hw-probe fusioninventory-agent
)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    # wait for another apt (unattended-upgrades, a second CI job) instead of failing at once
    apt-get -o DPkg::Lock::Timeout=900 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q \
      --no-install-recommends "${missing[@]}"
  fi
fi

# The appliance test (tests/vm): the .deb built and booted in a Debian 12 VM under QEMU (TCG); it
# adds about 14 minutes on 2 cores (README.md gives the measured wall times). It needs root (debootstrap, chroot), network namespaces and /dev/net/tun
# (its network never leaves the machine) and ~3 GB of disk. EVO_VM=1: run it (and fail if this
# machine cannot); EVO_VM=0: skip it; unset (what CI does): run it when this machine can, else say
# loudly why not. A boot hung in the guest (no console output, or a kernel lockup report, before
# the system is up) is killed and booted again, at most twice (tests/vm/vmlib.py).
vm_unable() {
  [ "$(id -u)" = 0 ] || { echo "not root"; return; }
  command -v apt-get >/dev/null || { echo "no apt-get to install QEMU and debootstrap"; return; }
  [ -c /dev/net/tun ] || { echo "no /dev/net/tun"; return; }
  unshare --net true 2>/dev/null || { echo "cannot create a network namespace"; return; }
  local cache=${EVO_VM_CACHE:-/var/cache/evo-vm} free
  mkdir -p "$cache" 2>/dev/null || true
  free=$(df -Pk "$cache" 2>/dev/null | awk 'NR==2 {print $4}')
  [ "${free:-0}" -ge 3000000 ] || { echo "less than 3 GB free under $cache"; return; }
}
if [ -z "${EVO_VM:-}" ]; then
  why=$(vm_unable)
  if [ -z "$why" ]; then
    EVO_VM=1
  else
    EVO_VM=0
    echo "*** the appliance VM test (tests/vm) is NOT run: $why (EVO_VM=1 forces it) ***" >&2
  fi
fi
if [ "$EVO_VM" = 1 ]; then
  bash tests/vm/install-deps.sh
fi
export EVO_VM

# Debian's Python with Debian's libraries (what the appliance runs), plus the test tools from PyPI.
VENV=${EVO_TEST_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test,registry]"

# every skip is a failure here: this script installed everything the tests need
export EVO_STRICT_SKIPS=1
exec "$VENV/bin/python" -m pytest "$@"
