#!/usr/bin/env bash
# One shard of an image gate: `nodegate run --partition hash:SHARD/SHARDS`, reports and
# artifacts in OUT. The CI recipes beside this file run it once per matrix entry and then
# merge the shards' JUnit with `nodegate report merge` (tests/ci_recipes.rs runs the same).
#
#   SHARD=M SHARDS=N MANIFEST=... TRUST=... PROFILE=... ci/examples/shard.sh [RUN_ARGS...]
#
# Optional: BUNDLE (signed upgrade bundle manifest), SUITES (default: this repository's
# suites/), OUT (default out/shard-M), NODEGATE (default: nodegate on PATH).
# Exit code: nodegate's (0 passed, 1 checks failed, 4 image refused; README lists all).
set -euo pipefail
: "${SHARD:?SHARD (1-based) is required}" "${SHARDS:?SHARDS is required}"
: "${MANIFEST:?MANIFEST is required}" "${TRUST:?TRUST is required}" "${PROFILE:?PROFILE is required}"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${OUT:-out/shard-$SHARD}
args=(run --manifest "$MANIFEST" --trust "$TRUST" --profile "$PROFILE"
  --suites "${SUITES:-$repo/suites}" --partition "hash:$SHARD/$SHARDS"
  --junit "$out/junit.xml" --json "$out/report.json" --artifacts "$out/artifacts")
if [[ -n ${BUNDLE:-} ]]; then args+=(--upgrade-bundle "$BUNDLE"); fi
set +e
"${NODEGATE:-nodegate}" "${args[@]}" "$@"
code=$?
set -e
echo "shard $SHARD/$SHARDS: exit $code (reports in $out)"
exit "$code"
