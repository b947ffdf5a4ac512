#!/usr/bin/env bash
# test_train_cli: `gale train` refuses bad configs and arguments with messages that name the
# file and line, the key, or the folder at fault, and exits non-zero without a traceback.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
"$GALE_BIN" train --help | grep "usage: gale train CONFIG.yaml" > /dev/null  # no -q: an early exit would SIGPIPE gale
write_config "$tmp/run.yaml" "$tmp/run" 4 4

# expect_error MESSAGE ARGS...: gale train ARGS fails with MESSAGE on stderr
expect_error() {
  local want="$1"; shift
  if "$GALE_BIN" train "$@" > "$tmp/out" 2> "$tmp/err"; then
    echo "FAIL: gale train $* succeeded"; exit 1
  fi
  grep -qF -- "$want" "$tmp/err" || { echo "FAIL: gale train $*: '$(cat "$tmp/err")' lacks '$want'"; exit 1; }
}

expect_error "no config file given"
expect_error "unknown or incomplete option '--bogus'" "$tmp/run.yaml" --bogus
expect_error "$tmp/none.yaml: No such file" "$tmp/none.yaml"
expect_error "--set optim.lr=fast: optim.lr must be a number" "$tmp/run.yaml" --set optim.lr=fast
expect_error "--set run.stepz=3: unknown key run.stepz" "$tmp/run.yaml" --set run.stepz=3
sed 's/^  lr: .*/  lr: -1/' "$tmp/run.yaml" > "$tmp/bad.yaml"
line=$(grep -n "^  lr:" "$tmp/bad.yaml" | cut -d: -f1)
expect_error "$tmp/bad.yaml:$line: optim.lr = -1 is out of range" "$tmp/bad.yaml"
expect_error "data.seq_len is 32 but $tmp/data holds rows of seq_len 16" "$tmp/run.yaml" --set data.seq_len=32
sed "s|path: $tmp/data|path: $tmp/nowhere|" "$tmp/run.yaml" > "$tmp/nodata.yaml"
expect_error "$tmp/nowhere" "$tmp/nodata.yaml"
expect_error "optim.warmup must be in [0, 4 steps of the run] (got 9)" "$tmp/run.yaml" --set optim.warmup=9
expect_error "the data's vocabulary (32000) is larger than the model's vocab_size (100)" "$tmp/run.yaml" \
  --set model.vocab_size=100
# a damaged checkpoint is refused with the file at fault, not silently restarted
"$GALE_BIN" train "$tmp/run.yaml" --stop-at 2 > /dev/null
opt="$tmp/run/checkpoints/step_00000002/optimizer.safetensors"
head -c 1000 "$opt" > "$tmp/cut" && cp "$tmp/cut" "$opt"
expect_error "resuming from $tmp/run/checkpoints/step_00000002: $opt" "$tmp/run.yaml"
rm "$tmp/run/checkpoints/step_00000002/trainer_state.json"
expect_error "names $tmp/run/checkpoints/step_00000002, which has no trainer_state.json" "$tmp/run.yaml"
echo garbage > "$tmp/run/checkpoints/latest"
expect_error "does not name a checkpoint" "$tmp/run.yaml"
echo "train_cli: every bad input refused with its key, line or folder"
