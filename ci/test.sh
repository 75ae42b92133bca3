#!/usr/bin/env bash
# Runs every nodegate test. This is the README's test command and what CI runs.
#
# The VM and cluster tests need the test bed, so this builds it first (fixtures/build:
# cached under $NODEGATE_CACHE, default ~/.cache/nodegate; a warm cache takes seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
ci/install-deps.sh
fixtures/build
fixtures/kind/engine up   # the test bed's Docker engine, for the kind tests (fixtures/kind/README.md)
cargo build --locked --all-targets
cargo test --locked --no-fail-fast
