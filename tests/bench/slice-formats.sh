#!/usr/bin/env bash
# Slice formats side by side: for device slices [0, K) of zoo models, the file a tier needs, the
# time to load and optimise the slice, and the process's peak RSS, for
#   whole   the whole ONNX model loaded, the slice cut out of it (what every tier did before);
#   onnx    an ONNX sub-model of the range (python onnx's extract_model), loaded whole;
#   nnef    the slice artifact of `scission-cloud slice` (tract NNEF + manifest).
# Prints one line per (model, boundary, format). Needs `pip install onnx` for the onnx column.
# Usage: tests/bench/slice-formats.sh [BIN_DIR]   (default target/debug; deps are optimised)
set -euo pipefail
bin=${1:-target/debug}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cache=${SCISSION_CACHE:-$HOME/.cache/scission}/zoo
# model:K:crossing tensor (its ONNX name)
cases="resnet50:16:add_45 resnet50:93:add_221 resnet50:167:relu_398 vgg16:5:maxpool_9 vgg16:17:maxpool_31 vgg16:31:maxpool_57"
printf '%-9s %4s %-6s %10s %8s %9s  %s\n' model K format file_MiB load_s rss_MiB "weights / largest activation / budget (w + 2a + 40 MiB)"
for case in $cases; do
  IFS=: read -r model k tensor <<<"$case"
  "$bin/scission-cloud" zoo write "$model" --out "$work/$model.onnx" >/dev/null
  "$bin/scission-cloud" slice "$work/$model.onnx" --range "0,$k" --out "$work/$model-nnef" >/dev/null
  have_onnx=0
  if python3 -c "import onnx" 2>/dev/null; then
    python3 -c "import onnx.utils, sys; onnx.utils.extract_model(sys.argv[1], sys.argv[2], ['input'], [sys.argv[3]], check_model=False)" \
      "$work/$model.onnx" "$work/$model-$k.onnx" "$tensor"
    have_onnx=1
  fi
  run() { # format file args...
    local format=$1 file=$2; shift 2
    local out rss
    out=$( { /usr/bin/time -f 'RSS %M' "$bin/scission-cloud" run-slice "$@" --runs 1; } 2>&1 )
    rss=$(sed -n 's/^RSS \([0-9]*\)$/\1/p' <<<"$out")
    local load w a
    load=$(sed -n 's/.*optimised in \([0-9.]*\) s.*/\1/p' <<<"$out")
    w=$(sed -n 's/.*weights \([0-9.]*\) MiB.*/\1/p' <<<"$out")
    a=$(sed -n 's/.*largest activation \([0-9.]*\) MiB.*/\1/p' <<<"$out")
    local size budget
    size=$(awk -v b="$(stat -c %s "$file")" 'BEGIN{printf "%.1f", b/1048576}')
    budget=$(awk -v w="$w" -v a="$a" 'BEGIN{printf "%.1f", w+2*a+40}')
    printf '%-9s %4s %-6s %10s %8s %9.1f  %s / %s / %s\n' "$model" "$k" "$format" "$size" "$load" "$(awk -v r="$rss" 'BEGIN{print r/1024}')" "$w" "$a" "$budget"
  }
  run whole "$work/$model.onnx" --model "$work/$model.onnx" --range "0,$k"
  if [ $have_onnx = 1 ]; then
    n=$("$bin/scission-cloud" inspect "$work/$model-$k.onnx" | sed -n 's/.*: \([0-9]*\) compute nodes.*/\1/p')
    run onnx "$work/$model-$k.onnx" --model "$work/$model-$k.onnx" --range "0,$n"
  fi
  run nnef "$work/$model-nnef/0-$k.slice" "$work/$model-nnef/0-$k.slice"
done
