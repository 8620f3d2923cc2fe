#!/usr/bin/env bash
# A range flood against one cloud: one enrolled device asks for the model's every range
# [K, end) in turn (`scission-device run MODEL --split K,K --requests 1`, K over the model's inner
# cut points), each a legal plan and a slice the cloud must build. Prints how many requests were
# answered, how many were refused and why, and the cloud's resident memory after the first
# request and at its peak.
#
#   cargo build --workspace && tests/bench/flood.sh                      # zoo ResNet50, defaults
#   CLOUD_ARGS="--memory-mib 1024" tests/bench/flood.sh                  # a 1 GiB budget
#   MODEL=zoo:vgg16 BUDGET=twice tests/bench/flood.sh                    # twice the RSS after one request
#
# BUDGET=twice starts the cloud once to read its RSS after the first request, then floods a new
# cloud started with --memory-mib of twice that.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-zoo:resnet50}  # a file, or zoo:NAME (written with the cloud binary)
RANGES=${RANGES:-40}
# shellcheck source=tests/bench/common.sh
source tests/bench/common.sh
enroll_devices device
cuts=$("$BIN/scission-cloud" inspect "$MODEL" --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
last = max(p["position"] for p in d["positions"])
print(" ".join(str(p["position"]) for p in d["positions"] if p["cut_point"] and 0 < p["position"] < last))')
read -r -a cuts <<< "$cuts"
cuts=("${cuts[@]:0:$RANGES}")

device() { "$BIN/scission-device" run "$MODEL" --cluster "$cluster" --name device --cloud "$addr" --split "$1,$1" --requests 1 --timeout-ms 60000; }

start_cloud
if [ "${BUDGET:-}" = twice ]; then
  device "${cuts[0]}" > "$work/first.out" 2>&1 || { cat "$work/first.out" >&2; exit 1; }
  budget=$(( $(rss VmRSS) * 2 ))
  echo "RSS after one request: $(rss VmRSS) MB; flooding a new cloud with --memory-mib $budget"
  stop_cloud
  start_cloud --memory-mib "$budget"
fi
grep -h "memory budget" "$work/cloud.err" || true
ok=0; refused=0; first=
for k in "${cuts[@]}"; do
  if device "$k" > "$work/range-$k.out" 2>&1 && grep -q "requests: 1 ok" "$work/range-$k.out"; then ok=$((ok + 1)); else refused=$((refused + 1)); fi
  [ -n "$first" ] || first=$(rss VmRSS)
done
echo "cloud at $addr ($MODEL${CLOUD_ARGS:+, $CLOUD_ARGS}): ${#cuts[@]} ranges, $ok answered, $refused refused or failed"
echo "cloud RSS after the first range: $first MB; now $(rss VmRSS) MB; peak $(rss VmHWM) MB"
grep -h -E "^(request [0-9]+: .*fail|Error|error)" "$work"/range-*.out | sed 's/request [0-9]*/request N/; s/\[[0-9]*, [0-9]*)/[A, B)/; s/needs [0-9]* MiB/needs N MiB/' | sort | uniq -c | sort -rn | head -5 || true
