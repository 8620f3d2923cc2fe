#!/usr/bin/env bash
# A burst against one cloud: DEVICES device processes, each enrolled with its own certificate,
# each sending REQUESTS requests back to back to the cloud (`--split 0,0`: the device computes
# nothing) with a TIMEOUT_MS deadline, all started at once. Prints how many requests were
# answered and how many failed (with the failures' reasons), and the cloud's resident memory
# after one device alone and its peak over the burst.
#
#   cargo build --workspace && tests/bench/burst.sh            # 48 devices x 5 requests
#   DEVICES=96 REQUESTS=3 MODEL=zoo:resnet50 tests/bench/burst.sh
#   CLOUD_ARGS="--queue-mib 16" tests/bench/burst.sh           # a smaller queue budget
set -euo pipefail
cd "$(dirname "$0")/../.."
DEVICES=${DEVICES:-48}
REQUESTS=${REQUESTS:-5}
TIMEOUT_MS=${TIMEOUT_MS:-60000}
MODEL=${MODEL:-zoo:mobilenet_v2}  # a file, or zoo:NAME (written with the cloud binary)
# shellcheck source=tests/bench/common.sh
source tests/bench/common.sh
# shellcheck disable=SC2046  # one name per device, none with spaces
enroll_devices $(seq -f "device-%g" 1 "$DEVICES")
start_cloud
device() { "$BIN/scission-device" run "$MODEL" --cluster "$cluster" --name "device-$1" --cloud "$addr" --split 0,0 --requests "$2" --timeout-ms "$TIMEOUT_MS"; }
device 1 1 > "$work/one.out" 2>&1 || { cat "$work/one.out" >&2; exit 1; }
echo "cloud at $addr ($MODEL): RSS after one device's request: $(rss VmRSS) MB"
start=$(date +%s.%N)
for i in $(seq 1 "$DEVICES"); do device "$i" "$REQUESTS" > "$work/device-$i.out" 2>&1 & done
wait_failed=0
for job in $(jobs -p); do [ "$job" = "$cloud_pid" ] || wait "$job" || wait_failed=$((wait_failed + 1)); done
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
ok=$(grep -ho "requests: [0-9]* ok" "$work"/device-*.out | awk '{s += $2} END {print s + 0}')
failed=$(grep -ho "ok, [0-9]* failed" "$work"/device-*.out | awk '{s += $2} END {print s + 0}')
complete=$(grep -l "requests: $REQUESTS ok, 0 failed" "$work"/device-*.out | wc -l)
echo "$DEVICES devices x $REQUESTS requests in $(printf "%.1f" "$elapsed") s: $ok answered, $failed failed; $complete devices had every request answered; $wait_failed device processes exited with an error"
echo "cloud peak RSS over the burst: $(rss VmHWM) MB; threads now: $(awk '$1 == "Threads:" {print $2}' /proc/$cloud_pid/status)"
grep -h -E "^(request [0-9]+: .*fail|Error|error)" "$work"/device-*.out | sed 's/request [0-9]*/request N/' | sort | uniq -c | sort -rn | head -5 || true
