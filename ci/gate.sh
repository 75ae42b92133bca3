#!/usr/bin/env bash
# The main job, end to end, as a release pipeline runs it: build the test bed when absent
# (its signed image v1 is the release candidate), then `nodegate run` verifies the signed
# manifest, boots two nodes of the image under QEMU on the run's own network, joins them
# to a local control plane, runs every suite (integrity, containerd, kubelet, agent
# connectivity against an endpoint nodegate hosts, the cluster's pods and Services across
# both nodes, and the hot upgrade to the signed bundle v2 on a VM of its own) and writes
# JUnit, a JSON report, the HTML page and artifacts, and signed evidence of the run (with a
# gate key made in the working folder on first use). The rollback floor comes from the trust store's
# released.toml (the last released version of each image name), as a release pipeline
# keeps it. Then it shows the gate refusing a tampered copy of the same release before
# anything boots, and rolls the next release out: image v2 into a pool of image v1 nodes
# on one control plane (the roll-out suite, docs/rollout.md), the legacy node upgraded in
# place to bundle v2 and then replaced while a client counts every request.
#
#   ci/gate.sh [WORK_DIR [RUN_ARGS...]]   (WORK_DIR default: a new folder under /tmp,
#                                          printed at the end; RUN_ARGS go to the good
#                                          image's run, e.g. --boot-ahead on)
# Exit code: that of the run on the good image (0 = ship it; README lists the others), or
# when it passed, that of the roll-out.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
ci/install-deps.sh
fixtures/build
cargo build --release --locked --quiet
ng=$repo/target/release/nodegate
signed=${NODEGATE_CACHE:-$HOME/.cache/nodegate}/signed
signed_v2=${NODEGATE_CACHE:-$HOME/.cache/nodegate}/signed-v2
[[ -f $signed/trust/released.toml ]] || { echo "$signed/trust/released.toml missing: no rollback floor (fixtures/build)" >&2; exit 5; }
work=${1:-$(mktemp -d /tmp/nodegate-gate.XXXXXX)}
shift $(( $# > 0 ? 1 : 0 ))
mkdir -p "$work" && cd "$work"
echo "== working in $work"
[[ -f gate.key ]] || "$ng" keygen --out gate >/dev/null
rm -rf out/evidence.tar

echo "== nodegate run: two nodes of image v1, local control plane, all suites, hot upgrade to bundle v2"
set +e
"$ng" run --manifest "$signed/v1-direct/node.manifest.json" --trust "$signed/trust" \
  --upgrade-bundle "$signed/bundle-v2/bundle.manifest.json" \
  --profile "$repo/profiles/debian-fixture.toml" --suites "$repo/suites" --suite all \
  --control-plane local --nodes 2 --junit out/junit.xml --json out/report.json \
  --artifacts out/artifacts --evidence out/evidence.tar --evidence-key gate.key "$@"
code=$?
set -e

echo "== the same gate refuses a release with one flipped byte (integrity suite, no boot)"
set +e
"$ng" run --manifest "$signed/neg/flipped-byte/node.manifest.json" --trust "$signed/trust" \
  --profile "$repo/profiles/debian-fixture.toml" --suites "$repo/suites" --suite integrity \
  --junit out/tampered.junit.xml --json out/tampered.report.json --artifacts out/tampered-artifacts
tampered=$?
set -e
[[ $tampered -eq 4 ]] || { echo "expected exit 4 (integrity) for the tampered release, got $tampered" >&2; exit 1; }

echo "== nodegate run: the roll-out of image v2 into image v1 (one legacy node, one candidate)"
set +e
"$ng" run --manifest "$signed_v2/v2-direct/node.manifest.json" \
  --legacy-manifest "$signed/v1-direct/node.manifest.json" --trust "$signed/trust" \
  --upgrade-bundle "$signed/bundle-v2/bundle.manifest.json" \
  --profile "$repo/profiles/debian-fixture.toml" --suites "$repo/suites" --suite rollout \
  --control-plane local --junit out/rollout.junit.xml --json out/rollout.report.json \
  --artifacts out/rollout-artifacts
rollout=$?
set -e

echo "== the evidence verifies offline with the gate's public key"
"$ng" evidence verify out/evidence.tar --trust gate.pub

echo "== reports: $work/out/junit.xml $work/out/report.json, the page $work/out/report.html (artifacts in $work/out/artifacts, evidence $work/out/evidence.tar); the roll-out's: $work/out/rollout.report.json, $work/out/rollout.report.html"
echo "== verdict for image v1: exit $code; tampered release refused (exit $tampered); roll-out of image v2 into v1: exit $rollout"
if [[ $code -eq 0 ]]; then
  exit "$rollout"
fi
exit "$code"
