#!/usr/bin/env bash
# Benchmark (not a test; the machines are noisy, so compare the ratios of one run): the
# wall time to Ready of 1 node, and of 2 nodes booted together, on the run's own network
# with the local control plane; and, given gates' JSON reports (ci/gate.sh writes
# out/report.json), each one's wall time against the sum of its irreducible parts
# (control plane + one boot + one join + the checks' own time), e.g. a gate with its
# destructive checks' VMs booted ahead and one without. Needs
# fixtures/build.
#
#   ci/gate.sh /tmp/ahead --boot-ahead on; ci/gate.sh /tmp/not-ahead --boot-ahead off
#   ci/bench-nodes.sh [GATE_REPORT_JSON ...]   (e.g. /tmp/ahead/out/report.json ...)
#   NODEGATE_BENCH_READY=0 ci/bench-nodes.sh REPORTS...   (only the gates' figures)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
cargo build --release --locked --quiet
ng=$repo/target/release/nodegate
signed=${NODEGATE_CACHE:-$HOME/.cache/nodegate}/signed
work=$(mktemp -d /tmp/nodegate-bench-nodes.XXXXXX)
echo "== reports in $work"

ready_run() { # N JOBS: boots N nodes, at most JOBS at once, joins them, checks Ready
  "$ng" run --jobs "$2" --manifest "$signed/v1-direct/node.manifest.json" --trust "$signed/trust" \
    --profile "$repo/profiles/debian-fixture.toml" --suites "$repo/suites" --suite kubelet \
    --exact kubelet::node_ready --control-plane local --nodes "$1" \
    --json "$work/nodes-$1-$2.json" --artifacts "$work/artifacts-$1-$2" >/dev/null
}
# Boots of a wave overlap, and so do the joins that follow them: time to Ready = the boots'
# waves + the longest join (with --jobs 1 the boots add up).
to_ready='[.phases[] | select(.name == "boot") | .duration_secs] as $b
  | [.phases[] | select(.name == "join") | .duration_secs] as $j
  | (if .properties.jobs == "1" then ($b | add) else ($b | max) end) + ($j | max)'

if [[ ${NODEGATE_BENCH_READY:-1} != 0 ]]; then
ready_run 1 1
ready_run 2 1
ready_run 2 2
one=$(jq "$to_ready" "$work/nodes-1-1.json")
serial=$(jq "$to_ready" "$work/nodes-2-1.json")
together=$(jq "$to_ready" "$work/nodes-2-2.json")
boots() { jq -c '[.phases[] | select(.name == "boot") | .duration_secs | floor]' "$1"; }
printf 'time to Ready, 1 node:                         %6.1f s\n' "$one"
printf 'time to Ready, 2 nodes one after the other:    %6.1f s (boots %s s)\n' "$serial" "$(boots "$work/nodes-2-1.json")"
printf 'time to Ready, 2 nodes booted together:        %6.1f s (boots %s s)\n' "$together" "$(boots "$work/nodes-2-2.json")"
printf 'ratio 2 nodes together / 1 node:               %6.2f (2.00: no gain from the overlap)\n' \
  "$(echo "$together / $one" | bc -l)"
printf 'ratio 2 nodes together / one after the other:  %6.2f\n' "$(echo "$together / $serial" | bc -l)"
fi

for gate in "$@"; do
  jq -r --arg file "$gate" '
    def phase(n): [.phases[] | select(.name == n) | .duration_secs];
    (phase("control-plane") | add // 0) as $cp
    | (phase("boot") | first // 0) as $boot
    | (phase("join") | first // 0) as $join
    | ([.checks[] | .duration_secs // 0] | add) as $checks
    | ($cp + $boot + $join + $checks) as $parts
    | ([.nodes[] | select(."boot.ahead" == "true")] | length) as $ahead
    | "gate \($file): \(.nodes | length) VMs, \($ahead) booted ahead",
      "gate wall time:                     \(.duration_secs | floor) s",
      "irreducible parts (cp \($cp | floor) + boot \($boot | floor) + join \($join | floor) + checks \($checks | floor)): \($parts | floor) s",
      "ratio wall / parts:                 \(.duration_secs / $parts * 100 | floor / 100)"
  ' "$gate"
done
