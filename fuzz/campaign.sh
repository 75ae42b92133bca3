#!/usr/bin/env bash
# Runs one fuzz target for a wall-clock budget, at lowest priority, one libFuzzer
# process at a time. A finding stops libFuzzer; the script records it, adds its id to
# NODEGATE_FUZZ_KNOWN (see checks.rs) and goes on with the time that is left, so one
# shallow finding does not end the campaign. Logs go to fuzz/logs/TARGET/.
#
#   fuzz/campaign.sh TARGET SECONDS [libFuzzer flags...]
#
# Needs the binaries built first:
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -s none -a -O
set -u
cd "$(dirname "$0")"
t=$1; budget=$2; shift 2
bin=target/x86_64-unknown-linux-gnu/release/$t
logs=logs/$t; mkdir -p "$logs" "artifacts/$t" "corpus/$t"
known=${NODEGATE_FUZZ_KNOWN:-}
start=$(date +%s); seg=0
while :; do
  left=$(( budget - ($(date +%s) - start) ))
  [ "$left" -ge 5 ] || break
  seg=$((seg + 1))
  log=$logs/segment-$seg.log
  NODEGATE_FUZZ_KNOWN=$known nice -n 19 "$bin" -max_total_time="$left" -timeout=10 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" "$@" "corpus/$t" >"$log" 2>&1
  rc=$?
  id=$(grep -o -m1 '^\[[A-Za-z0-9_-]*\]' "$log" | tr -d '[]')
  art=$(grep -o -m1 "artifacts/$t/[a-z]*-[0-9a-f]*" "$log")
  echo "segment $seg rc=$rc id=${id:--} artifact=${art:--} $(grep -m1 'stat::number_of_executed_units' "$log")"
  if [ "$rc" -eq 0 ]; then break; fi
  if [ -z "$id" ]; then
    echo "a finding without an id (a panic inside nodegate, a timeout or OOM): stopping; see $log"
    break
  fi
  known=${known:+$known,}$id
done
echo "target $t: $(( $(date +%s) - start ))s wall, known=$known"
