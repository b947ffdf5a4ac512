#!/usr/bin/env bash
# Ranks must agree: `mpirun -np 2 gale train` where rank 1 alone gets a different --set (a
# model shape, the step count, the learning rate, the batch, the seed) ends on both ranks at
# start with exit status 1, naming the first key that differs and both values; before this
# check a different hidden_size overflowed a buffer in MPI_Allreduce and run.steps hung.
# The same for `gale prepare` (a different --seq-len on rank 1).
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
command -v mpirun >/dev/null || { echo "SKIP: mpirun not installed"; exit 77; }
mpi_flags=(--oversubscribe)
[ "$(id -u)" -ne 0 ] || mpi_flags+=(--allow-run-as-root)
fail=0

# rank 1 runs gale with RANK1_ARGS appended
cat > "$tmp/rank1.sh" <<'SH'
#!/usr/bin/env bash
if [ "${OMPI_COMM_WORLD_RANK:-0}" = 1 ]; then exec "$GALE_BIN" "$@" $RANK1_ARGS; fi
exec "$GALE_BIN" "$@"
SH
chmod +x "$tmp/rank1.sh"
export GALE_BIN

# expect_disagreement WANT RANK1_ARGS COMMAND...
expect_disagreement() {
  local want="$1" args="$2"; shift 2
  local rc=0
  RANK1_ARGS="$args" timeout 120 mpirun "${mpi_flags[@]}" -np 2 -x RANK1_ARGS -x GALE_BIN "$tmp/rank1.sh" "$@" \
    > "$tmp/out.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ] || [ "$rc" = 124 ] || ! grep -qF -- "$want" "$tmp/out.log"; then
    echo "FAIL: rank 1 with $args: exit $rc, want '$want' in:"; tail -20 "$tmp/out.log"; fail=1
  fi
  if grep -qE "AddressSanitizer|double free|Segmentation" "$tmp/out.log"; then
    echo "FAIL: rank 1 with $args crashed"; fail=1
  fi
}

write_config "$tmp/run.yaml" "$tmp/run" 4 2
differs="ranks disagree on the run (config, model layout, data): rank 1 has"
expect_disagreement "$differs model.hidden_size=64, rank 0 has model.hidden_size=32" \
  "--set model.hidden_size=64" train "$tmp/run.yaml"
expect_disagreement "$differs model.num_local_experts=8, rank 0 has model.num_local_experts=4" \
  "--set model.num_local_experts=8" train "$tmp/run.yaml"
expect_disagreement "$differs run.steps=5, rank 0 has run.steps=4" "--set run.steps=5" train "$tmp/run.yaml"
expect_disagreement "$differs optim.lr=0.02, rank 0 has optim.lr=0.01" "--set optim.lr=0.02" train "$tmp/run.yaml"
expect_disagreement "$differs data.micro_batch=1, rank 0 has data.micro_batch=2" "--set data.micro_batch=1" \
  train "$tmp/run.yaml"
expect_disagreement "$differs run.seed=12, rank 0 has run.seed=11" "--set run.seed=12" train "$tmp/run.yaml"
# agreeing ranks still train
mpirun "${mpi_flags[@]}" -np 2 "$GALE_BIN" train "$tmp/run.yaml" > "$tmp/ok.log" 2>&1 ||
  { echo "FAIL: agreeing ranks: $(tail -5 "$tmp/ok.log")"; fail=1; }

# gale prepare
printf 'one document here\n%%\nanother document there\n%%\na third one\n' > "$tmp/docs.txt"
expect_disagreement "ranks disagree on the prepare settings: rank 1 has seq_len=32, rank 0 has seq_len=16" \
  "--seq-len 32" prepare --input "$tmp/docs.txt" --tokenizer "$GALE_SHARED/tokenizers/mistral-v1.model" \
  --out "$tmp/prep" --text-mode separator --seq-len 16
exit $fail
