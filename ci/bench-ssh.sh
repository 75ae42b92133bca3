#!/usr/bin/env bash
# Benchmark (not a test): exec("true") over nodegate's persistent SSH session vs the
# OpenSSH client spawned per command, on one test bed VM. Needs fixtures/build.
#
#   ci/bench-ssh.sh [ROUNDS]     (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet --example bench_ssh_exec -- "${1:-30}"
