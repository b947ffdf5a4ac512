#!/usr/bin/env bash
# test_ep_faults: a rank killed (SIGKILL) in the middle of an expert-parallel run (ep=2, the
# other rank then waits in an all-to-all or all-reduce) ends the whole job, non-zero, within
# seconds rather than hanging; the latest checkpoint stays whole and the run resumes from it.
# From that checkpoint, each of these ends the job non-zero within seconds with the failing
# rank's message, and leaves the checkpoint as it was: a NaN in one weight of an expert that
# rank 1 alone holds (the loss turns non-finite on both ranks; both report rank 1's
# diagnostic naming the tensor), rank 1's shard of the weights missing, rank 1 dying or failing
# (file size limit) while it writes its part of a checkpoint (nothing is published), and rank 1
# started with another parallel.ep (the first differing key named before any collective).
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
source "$GALE_SOURCE/tests/train/mpi_flags.sh"
write_config "$tmp/run.yaml" "$tmp/run" 100000 2
sed -i 's/checkpoint_every: 5/checkpoint_every: 1/' "$tmp/run.yaml"
# through the local launcher, which execs mpirun
# (a checkpoint every step, in files of at most 200 kB: about 20 per step, so the kill often
# comes while the ranks write theirs)
GALE="$GALE_BIN" "$GALE_SOURCE/launch/train_mpi.sh" 2 "$tmp/run.yaml" --set parallel.ep=2 \
  --set checkpoint.shard_size=200000 > "$tmp/log" 2>&1 &
job=$!
for _ in $(seq 3000); do grep -q '^checkpoint ' "$tmp/log" 2>/dev/null && break; sleep 0.01; done
sleep 0.3
ranks=($(pgrep -P "$job" -f "gale train"))
[ "${#ranks[@]}" -eq 2 ] || { cat "$tmp/log"; echo "FAIL: expected 2 ranks under mpirun, found ${ranks[*]:-none}"; exit 1; }
killed_at=$(date +%s.%N)
kill -KILL "${ranks[1]}"
rc=0
for _ in $(seq 300); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$job" 2>/dev/null; then
  kill -KILL "$job" "${ranks[0]}" 2>/dev/null || true
  echo "FAIL: the job still runs 30 s after one of its ranks was killed"; exit 1
fi
wait "$job" || rc=$?
took=$(python3 -c "import sys, time; print('%.1f' % (time.time() - float(sys.argv[1])))" "$killed_at")
[ "$rc" -ne 0 ] || { cat "$tmp/log"; echo "FAIL: the job exited 0 after a rank was killed"; exit 1; }
python3 -c "import sys; sys.exit(float(sys.argv[1]) > 10)" "$took" ||
  { echo "FAIL: the job took ${took}s to end after a rank was killed"; exit 1; }
"$GALE_BIN" inspect "$tmp/run" > /dev/null || { echo "FAIL: the latest checkpoint is unreadable"; exit 1; }
step=$(sed 's/step_0*//' "$tmp/run/checkpoints/latest")
mpirun "${mpi_flags[@]}" -np 2 "$GALE_BIN" train "$tmp/run.yaml" --set parallel.ep=2 --stop-at $((step + 1)) > "$tmp/log2" 2>&1 ||
  { cat "$tmp/log2"; echo "FAIL: resume after the kill"; exit 1; }
grep -q "resuming from .*: step $step" "$tmp/log2"
echo "ep faults: a killed rank ended the job (exit $rc) in ${took}s; resumed from step $step"

step=$(sed 's/step_0*//' "$tmp/run/checkpoints/latest")
ckpt_name=$(cat "$tmp/run/checkpoints/latest")
# expect_fast_failure NAME WANT: mpirun -np 2 on a copy of the run ($tmp/NAME, prepared by the
# caller) ends non-zero within 30 s (never a hang), its output holding WANT, and the copy's
# latest checkpoint is still the one it started from, and whole
expect_fast_failure() {  # expect_fast_failure NAME WANT [ARGS...]
  local name=$1 want=$2 rc=0
  shift 2
  local started=$(date +%s.%N)
  RANK1_ARGS="${RANK1_ARGS:-}" RANK1_FSIZE="${RANK1_FSIZE:-}" RANK1_XFSZ="${RANK1_XFSZ:-}" timeout 120 \
    mpirun "${mpi_flags[@]}" -np 2 -x RANK1_ARGS -x RANK1_FSIZE -x RANK1_XFSZ -x GALE_BIN "$tmp/rank1.sh" \
    train "$tmp/$name.yaml" --set parallel.ep=2 "$@" > "$tmp/$name.log" 2>&1 || rc=$?
  local took=$(python3 -c "import sys, time; print('%.1f' % (time.time() - float(sys.argv[1])))" "$started")
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || { cat "$tmp/$name.log"; echo "FAIL: $name: exit $rc"; exit 1; }
  python3 -c "import sys; sys.exit(float(sys.argv[1]) > 30)" "$took" ||
    { echo "FAIL: $name: the job took ${took}s to end"; exit 1; }
  grep -qF -- "$want" "$tmp/$name.log" || { cat "$tmp/$name.log"; echo "FAIL: $name: no '$want'"; exit 1; }
  [ "$(cat "$tmp/$name/checkpoints/latest")" = "$ckpt_name" ] || { echo "FAIL: $name: latest moved"; exit 1; }
  echo "ep faults: $name ended the job (exit $rc) in ${took}s with: $(grep -F -- "$want" "$tmp/$name.log" | head -1 | cut -c1-200)"
}
cat > "$tmp/rank1.sh" <<'SH'
#!/usr/bin/env bash
if [ "${OMPI_COMM_WORLD_RANK:-0}" = 1 ]; then
  # files of at most RANK1_FSIZE blocks of 512 bytes: past that the rank dies of SIGXFSZ, or
  # with RANK1_XFSZ=ignore its write fails (EFBIG)
  [ -z "$RANK1_FSIZE" ] || ulimit -f "$RANK1_FSIZE"
  [ "$RANK1_XFSZ" != ignore ] || trap '' XFSZ
  exec "$GALE_BIN" "$@" $RANK1_ARGS
fi
exec "$GALE_BIN" "$@"
SH
chmod +x "$tmp/rank1.sh"
export GALE_BIN
copy_run() {  # copy_run NAME: $tmp/NAME, a copy of the run folder, and its config
  cp -r "$tmp/run" "$tmp/$1"
  sed "s|dir: $tmp/run\$|dir: $tmp/$1|" "$tmp/run.yaml" > "$tmp/$1.yaml"
}
shard="model-00002-of-00002.safetensors"  # rank 1's experts (2 and 3 of 4)

# a NaN in one weight of expert 3 of layer 0, which only rank 1 holds
copy_run nan
python3 - "$tmp/nan/checkpoints/$ckpt_name/$shard" <<'PY'
import json, struct, sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
begin = 8 + n + json.loads(data[8:8 + n])["model.layers.0.block_sparse_moe.experts.3.w1.weight"]["data_offsets"][0]
data[begin:begin + 4] = struct.pack("<f", float("nan"))
open(path, "wb").write(data)
PY
expect_fast_failure nan "rank 1: step $((step + 1)): non-finite loss nan / gradient norm nan; non-finite weights: model.layers.0.block_sparse_moe.experts.3.w1.weight (1 of"
"$GALE_BIN" inspect "$tmp/nan" > /dev/null || { echo "FAIL: nan: the checkpoint is unreadable"; exit 1; }

# rank 1's shard of the weights is missing
copy_run missing
rm "$tmp/missing/checkpoints/$ckpt_name/$shard"
expect_fast_failure missing "$shard"

# rank 1 dies (SIGXFSZ), or fails (EFBIG), in the middle of writing its part of the next
# checkpoint, rank 0 having written its own: nothing is published
for how in die ignore; do
  copy_run "write_$how"
  want="rank 1: checkpoint part in $tmp/write_$how/checkpoints/step_$(printf %08d $((step + 1))).tmp"
  [ $how = ignore ] || want="exited on signal 25"
  RANK1_FSIZE=100 RANK1_XFSZ=$how expect_fast_failure "write_$how" "$want" --stop-at $((step + 2))
  [ ! -e "$tmp/write_$how/checkpoints/step_$(printf %08d $((step + 1)))" ] || { echo "FAIL: write_$how: a partial checkpoint was published"; exit 1; }
  "$GALE_BIN" inspect "$tmp/write_$how" > /dev/null || { echo "FAIL: write_$how: the checkpoint is unreadable"; exit 1; }
done

# rank 1 started with another parallel.ep
copy_run config
RANK1_ARGS="--set parallel.ep=1" expect_fast_failure config "rank 1 has parallel.ep=1, rank 0 has parallel.ep=2"
"$GALE_BIN" inspect "$tmp/config" > /dev/null || { echo "FAIL: config: the checkpoint is unreadable"; exit 1; }
