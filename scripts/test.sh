#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian 12 machine (as root), then run it.
# Used as is by CI (.ci/run). Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-pip
  # the agent's runtime dependencies, Debian's versions (the .deb uses these)
  python3-psutil python3-pyudev python3-pyroute2 python3-requests python3-systemd python3-cryptography
  # what the collectors read or run, and the tests' real tools
  dmidecode pciutils usbutils hwdata tar gzip iproute2
  i2c-tools  # decode-dimms: the JEDEC manufacturer table is checked against it
  # the registry's tests: a real PostgreSQL, the finder in headless Chromium, the form's QR code
  postgresql chromium poppler-utils zbar-tools
  # the delivery tests: the VPN path over WireGuard between network namespaces (userspace)
  wireguard-go wireguard-tools
  # benchmarks (bench/): GNU time, and the tools evo-agent is compared with
  time hyperfine lshw inxi hw-probe fusioninventory-agent
)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

# The appliance test (tests/vm): the .deb built and booted in a Debian 12 VM under QEMU. It needs
# root (debootstrap, chroot, network namespaces) and about 20 minutes under TCG on 2 cores, and runs
# when asked for: EVO_VM=1 (as root). It is not in the default run (what CI runs) yet: in a
# clean-clone run of session 2 one of its ten boots hung in the guest kernel (a soft lockup under
# TCG, the console still printing), which the hang watch did not catch then; tests/vm/vmlib.py now
# retries such a boot, and the test goes back into the default run once that has been seen to work.
# Without EVO_VM=1 the VM tests are skipped (not counted as strict-run skips).
if [ "${EVO_VM:-0}" = 1 ]; then
  bash tests/vm/install-deps.sh
  export EVO_VM=1
else
  export EVO_VM=0
fi

# Debian's Python with Debian's libraries (what the appliance runs), plus the test tools from PyPI.
VENV=${EVO_TEST_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test,registry]"

# every skip is a failure here: this script installed everything the tests need
export EVO_STRICT_SKIPS=1
exec "$VENV/bin/python" -m pytest "$@"
