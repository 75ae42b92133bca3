#!/usr/bin/env bash
# Runs every nodegate test. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
ci/install-deps.sh
cargo build --locked --all-targets
cargo test --locked --no-fail-fast
