#!/usr/bin/env bash
# Installs the Debian 12 packages rstwatch needs that are not installed yet.
#   scripts/deps.sh          build and run
#   scripts/deps.sh --test   also everything the test suite uses
set -euo pipefail

packages=(
  cmake g++ make pkg-config clang llvm bpftool libbpf-dev libelf-dev zlib1g-dev
  libspdlog-dev libcli11-dev nlohmann-json3-dev libyaml-cpp-dev libcurl4-openssl-dev
  prometheus-cpp-dev libmicrohttpd-dev libgnutls28-dev libabsl-dev
)
if [[ "${1:-}" == "--test" ]]; then
  packages+=(libgtest-dev python3 python3-yaml iproute2 nginx-light curl openssl procps prometheus libclang-rt-14-dev libfaketime)
  # Real runtimes (tests/kernel/test_runtimes.py): HAProxy, Tomcat 10 (Node.js is expected on PATH).
  packages+=(haproxy tomcat10)
  # The agent image (tests/image): podman with runc, base images made with mmdebstrap.
  packages+=(podman runc mmdebstrap)
  # Kernel matrix (tests/kernels): Debian's kernels booted under qemu with a busybox initramfs.
  packages+=(qemu-system-x86 busybox-static cpio libc6-dev binutils)
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if (( ${#missing[@]} == 0 )); then
  exit 0
fi

sudo=""
if (( EUID != 0 )); then sudo="sudo"; fi
echo "deps: installing ${missing[*]}" >&2
$sudo apt-get update -q
# Packaged services (nginx) must not start on install: the tests start their own.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee $policy >/dev/null
  $sudo chmod +x $policy
  created_policy=1
fi
cleanup() { if [[ $created_policy == 1 ]]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
