#!/usr/bin/env bash
# test_mpi: data parallelism. 2 ranks x 2 rows give the same losses, to rounding, as 1 rank
# accumulating 2 micro-batches of 2 rows over the same global batch (the loader deals the
# same rows; gradients are all-reduced; the loss is the mean over the global batch's targets).
# With ZeRO-1 (optim.zero) and a resume in between, 2 ranks give exactly what they give
# without it.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
source "$GALE_SOURCE/tests/train/mpi_flags.sh"
steps=8
write_config "$tmp/one.yaml" "$tmp/one" $steps 2 2
write_config "$tmp/two.yaml" "$tmp/two" $steps 2 1
"$GALE_BIN" train "$tmp/one.yaml" > "$tmp/one.log"
mpirun "${mpi_flags[@]}" -np 2 "$GALE_BIN" train "$tmp/two.yaml" > "$tmp/two.log" 2>&1 ||
  { cat "$tmp/two.log"; echo "FAIL: mpirun -np 2 gale train"; exit 1; }
grep -q "2 rank(s) x 1 thread(s); AdamW moments of 2091424 parameters per rank$" "$tmp/two.log"
losses "$tmp/one" > "$tmp/a"
losses "$tmp/two" > "$tmp/b"
python3 - "$tmp/a" "$tmp/b" <<'PY'
import sys
a = [float(l.split()[1]) for l in open(sys.argv[1])]
b = [float(l.split()[1]) for l in open(sys.argv[2])]
assert len(a) == len(b) == 8, (len(a), len(b))
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print("1 rank:  " + " ".join("%.6f" % x for x in a))
print("2 ranks: " + " ".join("%.6f" % x for x in b))
print("largest relative difference %.2e" % worst)
assert worst < 1e-5, "FAIL: 2 ranks differ from 1 rank beyond rounding"
assert a[-1] < a[0] - 1.0, "FAIL: the loss does not fall"
PY
# both wrote one checkpoint, of the same step, saying how many ranks made it
grep -q '"size": 2' "$tmp/two/checkpoints/step_00000008/trainer_state.json"

# ZeRO-1 (each rank keeps and updates half of the AdamW moments), stopped at step 4 and
# resumed: the same losses, weights and moments as the unsharded run, to the bit
write_config "$tmp/zero.yaml" "$tmp/zero" $steps 2 1
mpirun "${mpi_flags[@]}" -np 2 "$GALE_BIN" train "$tmp/zero.yaml" --set optim.zero=true --stop-at 4 > "$tmp/zero.log" 2>&1 ||
  { cat "$tmp/zero.log"; echo "FAIL: ZeRO-1 run"; exit 1; }
mpirun "${mpi_flags[@]}" -np 2 "$GALE_BIN" train "$tmp/zero.yaml" --set optim.zero=true > "$tmp/zero.log" 2>&1 ||
  { cat "$tmp/zero.log"; echo "FAIL: ZeRO-1 resume"; exit 1; }
grep -q "AdamW moments of 1045712 parameters per rank (ZeRO-1)" "$tmp/zero.log"
losses "$tmp/zero" > "$tmp/c"
diff "$tmp/b" "$tmp/c" || { echo "FAIL: ZeRO-1 losses differ from the unsharded optimizer's"; exit 1; }
# each rank wrote the tensors starting in its shard (and their moments): the same tensors
python3 "$GALE_SOURCE/tests/train/checkpoint_files.py" same "$tmp/two/checkpoints/step_00000008" \
  "$tmp/zero/checkpoints/step_00000008" model optimizer
[ -e "$tmp/zero/checkpoints/step_00000008/model-00002-of-00002.safetensors" ] ||
  { ls "$tmp/zero/checkpoints/step_00000008"; echo "FAIL: rank 1 of the ZeRO-1 run wrote no file of its own"; exit 1; }
echo "mpi: 2 ranks match 1 rank; ZeRO-1 matches to the bit"
