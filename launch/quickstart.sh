#!/usr/bin/env bash
# The main job on its built-in defaults, from the project root of a fresh machine:
#   1. build gale;
#   2. prepare Debian's English fortunes (dedup, Mistral v1 tokenizer, packed zstd HDF5 shards);
#   3. pretrain a tiny Mixtral (8 experts, top-2) on the CPU for a few minutes;
#   4. plot its loss and learning rate, and sample text from the last checkpoint.
# QUICKSTART_STEPS (default 100) sets the length of the run; rerunning resumes it.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${QUICKSTART_STEPS:-100}"
run=runs/mixtral-tiny-fortunes

cmake -S . -B build >/dev/null
cmake --build build -j"$(nproc)"

echo "== gale prepare: Debian fortunes -> out/fortunes"
build/gale prepare configs/prepare-fortunes.yaml
build/gale inspect out/fortunes

echo "== gale train: tiny Mixtral, $steps steps (Ctrl-C saves a checkpoint; rerun resumes)"
# Passive OpenMP waiting: on a shared machine spinning threads lose to other jobs.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
build/gale train configs/mixtral-tiny-fortunes.yaml --set run.steps="$steps" \
  --set run.checkpoint_every=50 --set run.eval_every=25

echo "== gale plot: loss and learning-rate curves"
build/gale plot "$run"

echo "== gale sample"
build/gale sample --checkpoint "$run" --prompt "The meaning of life is" --max-new 40 \
  --temperature 0.8 --top-p 0.9 --seed 1
