#!/usr/bin/env bash
# Install the Debian packages virtlab and its tests need, only those that are missing.
# Runs apt-get as root (or through sudo); prints what it does. Idempotent.
set -euo pipefail

PACKAGES=(
  qemu-utils qemu-system-x86      # qemu-img; the QEMU that runs nodes
  postgresql                      # the catalog on PostgreSQL, tested against a real server
  util-linux                      # prlimit: resource limits around qemu-img
  xz-utils bzip2 zstd gzip        # reference tools for compressed test images
  xorriso udftools fdisk          # ISO 9660, UDF and partitioned test images
  telnet                          # a real telnet client against the console ports
  tshark                          # reads link captures in the tests (as Wireshark would)
  graphviz                        # virtlab lab graph --svg renders with dot
  dosfstools mtools syslinux syslinux-common busybox-static cpio  # the tiny bootable test disk
  isolinux                        # the tiny bootable test ISO (El Torito)
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients  # libvirt hosts, run by the tests
  libvirt-dev pkg-config gcc      # libvirt-python (PyPI) builds against them
  chromium fonts-dejavu-core      # the web UI's tests: a real browser, driven by Playwright
)
# Node.js builds the web UI (any node >= 18; Debian 12's is 18). A node already on the PATH,
# from wherever it came, is used as it is: Debian's is installed only when there is none.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup-system: all Debian packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "setup-system: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
