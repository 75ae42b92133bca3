#!/usr/bin/env bash
# Installs the host packages nodegate's build and tests need, on Debian 12 as root.
# Cheap when everything is present (no apt-get call at all).
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v bc >/dev/null || need+=(bc)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
[[ -e /usr/include/openssl/ssl.h ]] || need+=(libssl-dev)
if [[ ${#need[@]} -gt 0 ]]; then
  echo "ci/install-deps.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "ci/install-deps.sh: cargo not found: install Rust (rustup) first" >&2; exit 5; }
