#!/usr/bin/env bash
# The README's main job, on a fresh machine: install, make toy data, train the `toy` preset on
# the CPU for a few minutes, sample it with the fused sampler, write the pictures, and score the
# samples with the quality yardstick against held-out data.
#   bash scripts/demo.sh            (OUT=out/demo, VENV=.venv, STEPS=..., SEED=... to change)
# Run again with the same settings, it resumes; with more STEPS, give a new OUT (the samples
# folder refuses images from another checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/demo}
STEPS=${STEPS:-2500}
SEED=${SEED:-0}
EVAL_N=${EVAL_N:-256}
# This job runs on the CPU: without a visible GPU, skip compiling the CUDA kernels (minutes on
# two cores; scripts/test.sh builds them). Set BLURDIFF_NO_CUDA=0 to build them anyway.
if ! (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1); then
  export BLURDIFF_NO_CUDA=${BLURDIFF_NO_CUDA:-1}
fi
. scripts/install_env.sh

mkdir -p "$OUT"
# Training data, and held-out images from another seed for the yardstick (not the training set:
# a model that memorised its data must not score as the data's own noise floor).
[ -e "$OUT/data/data.mdb" ] || blurdiff data toy --out "$OUT/data" --n 2000 --size 32 --seed 0
[ -e "$OUT/heldout/data.mdb" ] || blurdiff data toy --out "$OUT/heldout" --n $((2 * EVAL_N)) --size 32 --seed 1
# --resume: an interrupted run goes on from its newest checkpoint (an empty folder starts afresh).
# The last line says whether the run looks healthy (loss spikes, samples in range).
blurdiff train --data "$OUT/data" --preset toy --out "$OUT/run" --max-steps "$STEPS" --device cpu \
  --ckpt-every 200 --sample-every 0 --seed "$SEED" --resume
# The paper's sampler (Eq. 12, all 1000 steps) for the pictures ...
blurdiff sample --run "$OUT/run" --n 16 --out "$OUT/samples" --seed 0 --device cpu --trajectory --grid
# ... and the ancestral integrator at 50 steps (as good on the yardstick, 20x faster) for the score.
blurdiff sample --run "$OUT/run" --n "$EVAL_N" --out "$OUT/eval_samples" --steps 50 --seed 0 --device cpu \
  --batch-size 128 --grid --quiet
blurdiff figures forward --data "$OUT/data" --preset toy --out "$OUT/forward.png"
echo
blurdiff eval --samples "$OUT/eval_samples" --data "$OUT/heldout" --json "$OUT/eval.json"
echo
echo "samples:     $OUT/samples/000000.png … 000015.png, grid: $OUT/samples/figures/grid.png"
echo "trajectory:  $OUT/samples/figures/trajectory.png (x_N … x_0), trajectory_x0.png (predicted x_0)"
echo "forward:     $OUT/forward.png"
echo "yardstick:   $OUT/eval.json ($EVAL_N samples of $OUT/eval_samples against $OUT/heldout)"
echo "run:         $OUT/run (checkpoints, metrics.jsonl)"
