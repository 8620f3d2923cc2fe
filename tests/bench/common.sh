# Shared by the bench scripts (sourced, from the repository root): a throwaway cluster with a
# cloud enrolled, the model file, and one cloud process. Reads BIN (default target/debug),
# MODEL (a file, or zoo:NAME, written with the cloud binary) and CLOUD_ARGS; sets work, cluster,
# MODEL (a file), and, once start_cloud ran, cloud_pid and addr.
BIN=${BIN:-target/debug}
work=$(mktemp -d)
cloud_pid=
trap '[ -n "$cloud_pid" ] && kill "$cloud_pid" 2>/dev/null; rm -rf "$work"' EXIT
cluster="$work/cluster"
"$BIN/scission-cloud" init --cluster "$cluster" >/dev/null
"$BIN/scission-cloud" enroll cloud --tier cloud --cluster "$cluster" >/dev/null
if [[ $MODEL == zoo:* ]]; then
  "$BIN/scission-cloud" zoo write "${MODEL#zoo:}" --out "$work/model.onnx" >/dev/null
  MODEL="$work/model.onnx"
fi

# Enrolls each name given as a device of the cluster.
enroll_devices() {
  for name in "$@"; do "$BIN/scission-cloud" enroll "$name" --tier device --cluster "$cluster" >/dev/null; done
}

# Starts the cloud serving MODEL with CLOUD_ARGS and the arguments given; waits for its address.
start_cloud() {
  # shellcheck disable=SC2086
  "$BIN/scission-cloud" serve "$MODEL" --cluster "$cluster" "$@" ${CLOUD_ARGS:-} > "$work/cloud.out" 2> "$work/cloud.err" &
  cloud_pid=$!
  for _ in $(seq 1 600); do grep -q "serving" "$work/cloud.out" 2>/dev/null && break; sleep 0.1; done
  addr=$(head -1 "$work/cloud.out" | awk '{print $NF}')
  [ -n "$addr" ] || { echo "the cloud did not start:" >&2; cat "$work/cloud.err" >&2; exit 1; }
}

stop_cloud() { kill "$cloud_pid"; wait "$cloud_pid" 2>/dev/null || true; cloud_pid=; }

# The cloud's resident memory in MB: rss VmRSS (now) or rss VmHWM (its peak).
rss() { awk -v k="$1" '$1 == k":" {print int($2 / 1024)}' "/proc/$cloud_pid/status"; }
