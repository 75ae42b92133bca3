#!/usr/bin/env bash
# The main job, end to end: make a release key, a disk image, its manifest, sign it, and
# verify it as a release gate would.
#
#   ci/gate.sh [WORK_DIR]      (default: a new folder under /tmp, printed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
ci/install-deps.sh
cargo build --release --locked --quiet
ng=$PWD/target/release/nodegate
work=${1:-$(mktemp -d /tmp/nodegate-gate.XXXXXX)}
mkdir -p "$work" && cd "$work"
echo "== working in $work"

echo "== keygen"
[[ -f keys/release.key ]] || "$ng" keygen --out keys/release
mkdir -p trust && cp keys/release.pub trust/

echo "== image (256 MiB of random bytes standing in for a disk image)"
[[ -f node.qcow2 ]] || head -c 256M /dev/urandom >node.qcow2

echo "== manifest create"
"$ng" manifest create --image node.qcow2 --name demo-node --image-version 1 \
  --key keys/release.pub --valid-for 30d \
  --component containerd=1.6.20 --component kubelet=v1.20.2

echo "== sign"
"$ng" sign --key keys/release.key node.manifest.json

echo "== verify (the gate)"
"$ng" verify --trust trust --min-version 1 node.manifest.json

echo "== verify refuses a tampered copy"
cp node.qcow2 node.qcow2.orig
printf '\x01' | dd of=node.qcow2 bs=1 seek=1000 conv=notrunc status=none
set +e
"$ng" verify --trust trust node.manifest.json
code=$?
set -e
mv node.qcow2.orig node.qcow2
[[ $code -eq 4 ]] || { echo "expected exit 4 (integrity), got $code" >&2; exit 1; }
echo "== gate passed for the signed image, refused the tampered one (exit $code)"
