#!/usr/bin/env bash
# Does our stage 1 reproduce the paper's latent-action clusters at the paper's budget?
# The prepared run for a lent GPU: about 10 minutes of one H100 from a bare machine with this
# repository copied onto it (the GPU set-up is gpu_env.sh's).
#
#   bash benchmarks/stage1_paper.sh          # on the GPU machine; figures under $OUT (or runs/)
#   bash benchmarks/stage1_paper.sh --toy    # toy sizes on a CPU: checks the script end to end
#
# 1. records GAME's frames with the shipped demonstrator (FRAMES train, FRAMES/5 test);
# 2. trains the `paper` preset's stage 1 (50,000 steps at batch 128, bf16, data on the GPU)
#    for at most MINUTES minutes of training steps (it stops earlier at 50,000);
# 3. probes it with both protocols (quick: 4,096 labelled windows, 30 epochs; paper: 65,536
#    windows, 3 epochs) and draws its latent map and k-means clusters (UMAP where umap-learn
#    is installed, else PCA) beside the untrained IDM's probe;
# 4. does the same for the best recipe of docs/results/stage1.md (RECIPE: options added to the paper
#    preset) for the same minutes;
# 5. prints one table and writes it to $OUT/stage1_paper.md with the runs' metrics and pictures.
#
# Environment: GAME (coinrun), FRAMES (300000), MINUTES (3.5), RECIPE ("--idm-differences
# --idm-difference-scale 10 --changed-pixel-weight 10 --quantizer.restart-unused-steps 100").
set -euo pipefail
TOY=0
[ "${1:-}" = "--toy" ] && TOY=1
source "$(dirname "$0")/gpu_env.sh"

GAME=${GAME:-coinrun}
RECIPE=${RECIPE:---idm-differences --idm-difference-scale 10 --changed-pixel-weight 10 --quantizer.restart-unused-steps 100}
OUT=${OUT:-runs/stage1_paper}
WORK=${WORK:-/tmp/lapo_stage1_paper}
if [ "$TOY" = 1 ]; then
  FRAMES=${FRAMES:-2000}; MINUTES=${MINUTES:-0.3}; PRESET=fast; DEVICE=cpu; ENVS=8
  FAST=(--steps 40 --eval-every 20 --probe-every 20 --probe-train 256 --probe-test 256)
  PROBE=(--labels 512 --test 512)
else
  FRAMES=${FRAMES:-300000}; MINUTES=${MINUTES:-3.5}; PRESET=paper; DEVICE=cuda; ENVS=64
  FAST=(--precision bf16 --data-on-device --eval-every 2500 --probe-every 5000)
  PROBE=(--labels 4096 --test 4096)
fi
mkdir -p "$OUT" "$WORK"
lapo() { $PY -m lapo "$@"; }

if [ ! -f "$WORK/data/manifest.json" ]; then
  echo "== recording $FRAMES $GAME frames with the shipped demonstrator"
  lapo collect --env "$GAME" --policy demonstrator --frames "$FRAMES" \
    --test-frames $((FRAMES / 5)) --num-envs "$ENVS" --out "$WORK/data" --quiet
fi

stage1() {  # name, extra options...
  local name=$1; shift
  local run="$WORK/$name"
  echo "== stage 1: $name ($PRESET preset $*), at most $MINUTES minutes"
  lapo lam train --data "$WORK/data" --out "$run" --preset "$PRESET" --device "$DEVICE" \
    --max-minutes "$MINUTES" --quiet "${FAST[@]}" "$@" > "$OUT/$name.summary.json"
  lapo lam probe --run "$run" --data "$WORK/data" "${PROBE[@]}" > "$OUT/$name.probe_quick.json"
  lapo lam probe --run "$run" --data "$WORK/data" --protocol paper > "$OUT/$name.probe_paper.json"
  lapo lam plot --run "$run" --data "$WORK/data" --out "$OUT/$name.plots" --clusters 8 > /dev/null
  cp "$run/metrics.csv" "$OUT/$name.metrics.csv"
  cp "$run/untrained.json" "$OUT/$name.untrained.json"
  cp "$run/config.json" "$OUT/$name.config.json"
}

stage1 paper
# shellcheck disable=SC2086
stage1 recipe $RECIPE

$PY - "$OUT" "$GAME" <<'PY' | tee "$OUT/stage1_paper.md"
import csv, json, sys
from pathlib import Path

out, game = Path(sys.argv[1]), sys.argv[2]
print(f"# Stage 1 at the paper's budget: {game} demonstrator data\n")
print("| run | steps | train minutes | untrained probe | quick probe / balanced | paper probe /"
      " balanced | majority |")
print("|---|---|---|---|---|---|---|")
for name in ("paper", "recipe"):
    rows = list(csv.DictReader(open(out / f"{name}.metrics.csv")))
    last = rows[-1]
    base = json.loads((out / f"{name}.untrained.json").read_text())["probe"]
    quick = json.loads((out / f"{name}.probe_quick.json").read_text())
    paper = json.loads((out / f"{name}.probe_paper.json").read_text())
    print(f"| {name} | {last['step']} | {float(last['train_seconds']) / 60:.1f} | "
          f"{base['accuracy']:.3f} | {quick['accuracy']:.3f} / {quick['balanced_accuracy']:.3f} | "
          f"{paper['accuracy']:.3f} / {paper['balanced_accuracy']:.3f} | "
          f"{paper['majority_class_accuracy']:.3f} |")
print(f"\nPictures: {out}/<run>.plots/ (latent map by true action, k-means clusters).")
PY
