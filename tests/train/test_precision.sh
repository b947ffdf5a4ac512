#!/usr/bin/env bash
# test_precision: the engine's run keys through `gale train` on the tiny Mixtral.
# backend.recompute: layer trains to the same losses and the same checkpoint bytes as keeping
# the activations (one thread: the same ops in the same order). backend.precision: bf16 trains,
# differs from fp32 (the rounding is on), and stays within the forward tolerance bf16's
# precision gives a 2-layer model (u (13 L + 3) = 0.113 relative, docs/engine.md) of the fp32
# losses at every step.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
train() {  # train NAME [--set ...]: 10 steps of 2 micro-batches into $tmp/NAME
  local name=$1
  shift
  write_config "$tmp/$name.yaml" "$tmp/$name" 10 2 2
  "$GALE_BIN" train "$tmp/$name.yaml" "$@" > "$tmp/$name.log"
}
train fp32
train recompute --set backend.recompute=layer
train bf16 --set backend.precision=bf16
if ! diff <(losses "$tmp/fp32") <(losses "$tmp/recompute"); then
  echo "FAIL: recomputation changed the losses"; exit 1
fi
cmp "$tmp/fp32/checkpoints/step_00000010/model.safetensors" \
  "$tmp/recompute/checkpoints/step_00000010/model.safetensors" ||
  { echo "FAIL: recomputation changed the weights"; exit 1; }
python3 - <(losses "$tmp/fp32") <(losses "$tmp/bf16") <<'PY'
import sys
fp32 = [float(l.split()[1]) for l in open(sys.argv[1])]
bf16 = [float(l.split()[1]) for l in open(sys.argv[2])]
tol = (13 * 2 + 3) / 256
assert len(fp32) == len(bf16) == 10, (len(fp32), len(bf16))
assert fp32 != bf16, "bf16 gave the fp32 losses: the rounding is off"
worst = max(abs(b - f) / abs(f) for f, b in zip(fp32, bf16))
assert worst <= tol, f"bf16 losses part from fp32 by {worst:.3g} relative, tolerance {tol:.3g}"
print(f"bf16 losses within {worst:.2e} of fp32 (tolerance {tol:.3f}); recomputation identical")
PY
