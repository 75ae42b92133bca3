#!/usr/bin/env bash
# Benchmark (not a test; the machines are noisy, so read the ratio of one run): the roll-out
# of the test bed's image v2 into a pool of image v1 nodes (docs/rollout.md) on the local
# control plane, and what it measured: each image's provisioning (VM start to Node Ready,
# booted side by side) and their ratio, the requests the client sent and lost and its
# longest gap during the pool upgrade and during the replacement, the legacy node's
# NotReady window, and the roll-out's wall time. Needs fixtures/build.
#
#   ci/bench-rollout.sh [--pool legacy=N,candidate=M] [other nodegate run options]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
cargo build --release --locked --quiet
ng=$repo/target/release/nodegate
cache=${NODEGATE_CACHE:-$HOME/.cache/nodegate}
work=$(mktemp -d /tmp/nodegate-bench-rollout.XXXXXX)
echo "== report in $work"
set +e
"$ng" run --manifest "$cache/signed-v2/v2-direct/node.manifest.json" \
  --legacy-manifest "$cache/signed/v1-direct/node.manifest.json" --trust "$cache/signed/trust" \
  --upgrade-bundle "$cache/signed/bundle-v2/bundle.manifest.json" \
  --profile "$repo/profiles/debian-fixture.toml" --suites "$repo/suites" --suite rollout \
  --control-plane local --json "$work/report.json" --artifacts "$work/artifacts" "$@" >"$work/run.log"
code=$?
set -e
jq -r '
  def fig(c; n): ([.checks[] | select(.id == c) | .figures[n]] | first) // "-";
  "verdict:                          \(.verdict) (exit \(.exit_code))",
  "provisioning, legacy:             \(fig("rollout::faster_provisioning"; "legacy_provisioning_secs")) s",
  "provisioning, candidate:          \(fig("rollout::faster_provisioning"; "candidate_provisioning_secs")) s",
  "ratio candidate / legacy:         \(fig("rollout::faster_provisioning"; "provisioning_ratio")) (budget \(fig("rollout::faster_provisioning"; "provisioning_budget")))",
  "pool upgrade: requests sent/lost: \(fig("rollout::pool_upgrade"; "requests_sent")) / \(fig("rollout::pool_upgrade"; "requests_failed")), longest gap \(fig("rollout::pool_upgrade"; "longest_gap_secs")) s, took \(fig("rollout::pool_upgrade"; "pool_upgrade_secs")) s",
  "  NotReady windows:               \([.checks[] | select(.id == "rollout::pool_upgrade") | .figures | to_entries[] | select(.key | startswith("not_ready_secs.")) | "\(.key | ltrimstr("not_ready_secs.")) \(.value) s"] | join(", "))",
  "replacement: requests sent/lost:  \(fig("rollout::replacement"; "requests_sent")) / \(fig("rollout::replacement"; "requests_failed")), longest gap \(fig("rollout::replacement"; "longest_gap_secs")) s, replaced \(fig("rollout::replacement"; "legacy_replaced"))",
  "wall time of the roll-out:        \(.duration_secs | floor) s"
' "$work/report.json"
exit "$code"
