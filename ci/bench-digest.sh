#!/usr/bin/env bash
# Benchmark (not a test): SHA-256 throughput of `nodegate digest` on a cached file,
# against `openssl speed -evp sha256` and coreutils `sha256sum`, measured in one run so
# the ratios are comparable on a noisy machine.
#
#   ci/bench-digest.sh [SIZE_MIB]     (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
cargo build --release --quiet
bin=target/release/nodegate
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
file=$tmp/blob
head -c "$((size_mib * 1048576))" /dev/urandom >"$file"
cat "$file" >/dev/null # warm the page cache
bytes=$(stat -c %s "$file")

best() { # best CMD...: the fastest of 3 runs, in seconds
  local best=""
  for _ in 1 2 3; do
    local s e t
    s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc -l)
    if [[ -z $best ]] || (( $(echo "$t < $best" | bc -l) )); then best=$t; fi
  done
  echo "$best"
}

ng_s=$(best "$bin" digest "$file")
sum_s=$(best sha256sum "$file")
# openssl speed prints e.g. "sha256  ...  1412345.67k" (kB/s per block size); take the last column.
ossl_kbs=$(openssl speed -seconds 3 -evp sha256 -bytes 1048576 2>/dev/null | awk '/^sha256/ {v=$NF} END {sub("k","",v); print v}')
ng=$(echo "$bytes / $ng_s / 1000000" | bc -l)
sum=$(echo "$bytes / $sum_s / 1000000" | bc -l)
ossl=$(echo "$ossl_kbs * 1000 / 1000000" | bc -l)
printf 'file: %d MiB (page cache warm)\n' "$size_mib"
printf '%-26s %8.0f MB/s\n' "nodegate digest" "$ng" "openssl speed -evp sha256" "$ossl" "sha256sum" "$sum"
printf 'nodegate / openssl   = %.2f (target >= 0.90)\n' "$(echo "$ng / $ossl" | bc -l)"
printf 'nodegate / sha256sum = %.2f\n' "$(echo "$ng / $sum" | bc -l)"
