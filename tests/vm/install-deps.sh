#!/bin/sh
# Install what the packaging checks and the appliance test need, on a fresh Debian 12 machine
# (run as root). Called by scripts/test.sh; safe to run again (apt-get skips what is installed).
set -eu
export DEBIAN_FRONTEND=noninteractive
PKGS="
  build-essential dpkg-dev debhelper dh-python pybuild-plugin-pyproject
  python3-all python3-setuptools
  lintian
  debootstrap debian-archive-keyring e2fsprogs
  qemu-system-x86 qemu-utils
  systemd-container
  iproute2
"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  # wait for another apt (unattended-upgrades, a second CI job) instead of failing at once
  apt-get -o DPkg::Lock::Timeout=900 update -q
  # shellcheck disable=SC2086  # word splitting of the package list is wanted
  apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends $missing
fi
