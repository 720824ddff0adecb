#!/usr/bin/env bash
# The real CLI at full FLUX.2 [klein] 4B scale on one GPU, random weights: capture, analyze and
# patch (the 25 bundled pairs, ${UNITS:-top:16,64,256,1024}, 20 random sets each), timed as processes.
#
# The patch run is longer than one 10-minute call of the GPU machine, so this script may be run
# several times in a row: the folder WORK keeps the model, the capture and patch's partial file,
# and each call stops patch with SIGINT before BUDGET_S seconds have passed (finished pairs are
# kept) and the next call continues it with --resume. Usage:
#
#   bash benches/cli_gpu.sh WORK OUT BUDGET_S
set -uo pipefail
WORK=${1:?work folder}
OUT=${2:?output folder}
BUDGET=${3:-560}
T0=$(date +%s)
mkdir -p "$WORK" "$OUT"
log() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$OUT/cli-gpu.log"; }
timed() { # name, command...: wall seconds into $OUT/cli-times.txt
  local name=$1; shift
  local t=$(date +%s%N)
  "$@"; local rc=$?
  echo "$name rc=$rc wall_ms=$((($(date +%s%N) - t) / 1000000))" | tee -a "$OUT/cli-times.txt"
  return $rc
}
DP="python3 -m dense_plantain"
DEV=${DEVICE:-cuda}
SIZE=${SIZE_ARGS:-}
if [ ! -f "$WORK/klein/model_index.json" ]; then
  log "making the full-size random-weights folder"
  python3 benches/load_gpu.py make "$WORK/klein" 2>&1 | tail -3 | tee -a "$OUT/cli-gpu.log" || exit 1
fi
if [ ! -f "$WORK/capture.safetensors" ]; then
  timed capture $DP capture --model "$WORK/klein" --prompts dense-plantain --out "$WORK/capture.safetensors" \
    --batch-size 8 --device "$DEV" $SIZE -q 2>&1 | tail -5
fi
if [ ! -f "$WORK/results/results.json" ]; then
  timed analyze $DP analyze "$WORK/capture.safetensors" --out "$WORK/results" -q 2>&1 | tail -5
fi
left=$((BUDGET - ($(date +%s) - T0)))
[ "$left" -lt 30 ] && { log "only ${left} s left: patch not started"; exit 0; }
log "patch with ${left} s left in this call"
resume=""
[ -f "$WORK/patch.partial.json" ] && resume="--resume"
timed patch timeout -s INT "$left" $DP patch --model "$WORK/klein" --prompts dense-plantain \
  --capture "$WORK/capture.safetensors" --results "$WORK/results" \
  --units ${UNITS:-top:16,64,256,1024} --random-sets ${RANDOM_SETS:-20} --device "$DEV" $SIZE --out "$WORK/patch" $resume 2>&1 | tail -15
ls -la "$WORK" | tee -a "$OUT/cli-gpu.log"
for f in "$WORK/patch/patch.json" "$WORK/patch/patch.md" "$WORK/results/results.md"; do
  [ -f "$f" ] && cp "$f" "$OUT/"
done
cp "$WORK"/patch*.partial.json "$OUT/" 2>/dev/null || true
