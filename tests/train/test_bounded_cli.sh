#!/usr/bin/env bash
# Small hostile inputs to the commands around training: a model needing more memory than the
# machine is refused before anything is allocated, naming the bytes; a key given twice in
# the run YAML names both lines; `gale sample --temperature nan` / `--top-p nan` are refused;
# `gale tokenize --decode` keeps the lines before a bad id; a checkpoint folder missing its
# weights fails `gale inspect`, and a save clears what an interrupted prune (step_N.deleting)
# or write (latest.tmp.PID of a dead process) left.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
fail=0
# expect STATUS TEXT COMMAND...: exits with STATUS within 60 s, stderr holds TEXT
expect() {
  local status="$1" text="$2"; shift 2
  local rc=0
  timeout 60 "$@" > "$tmp/out" 2> "$tmp/err" || rc=$?
  if [ "$rc" != "$status" ] || ! grep -qF -- "$text" "$tmp/err"; then
    echo "FAIL: $*: exit $rc (want $status), stderr: $(head -c 500 "$tmp/err") (want '$text')"; fail=1
  fi
}

# 2^30 experts: refused at once with the memory it would need
write_config "$tmp/huge.yaml" "$tmp/huge" 2 2
expect 1 "memory plan needs" "$GALE_BIN" train "$tmp/huge.yaml" --set model.num_local_experts=1073741824
grep -qE "the run's memory plan needs [0-9.e+]+ GiB on each rank \([0-9.e+]+ GiB of weights, gradients and moments" "$tmp/err" ||
  { echo "FAIL: huge model message: $(cat "$tmp/err")"; fail=1; }

# a key given twice
write_config "$tmp/twice.yaml" "$tmp/twice" 2 2
printf 'optim:\n  lr: 5.0e-2\n' >> "$tmp/twice.yaml"
line=$(grep -n '^optim:' "$tmp/twice.yaml" | head -1 | cut -d: -f1)
last=$(grep -n '^optim:' "$tmp/twice.yaml" | tail -1 | cut -d: -f1)
expect 1 "twice.yaml:$last: key 'optim' is given twice (first at line $line)" "$GALE_BIN" train "$tmp/twice.yaml"

# a short run with checkpoints for sample and inspect
write_config "$tmp/run.yaml" "$tmp/run" 6 2
"$GALE_BIN" train "$tmp/run.yaml" > "$tmp/train.log" 2>&1 || { echo "FAIL: training: $(tail -3 "$tmp/train.log")"; exit 1; }
expect 2 "--temperature needs a number" "$GALE_BIN" sample --checkpoint "$tmp/run" --prompt x --temperature nan
expect 2 "--top-p needs a number" "$GALE_BIN" sample --checkpoint "$tmp/run" --prompt x --top-p nan

# tokenize --decode: the lines before the bad one are printed, then the error with its line
printf '1 415 2936\n1 6312\n99999999\n1 415\n' > "$tmp/ids.txt"
expect 1 "ids.txt:3: id 99999999 is outside the vocabulary" \
  "$GALE_BIN" tokenize --tokenizer "$GALE_SHARED/tokenizers/mistral-v1.model" --decode --input "$tmp/ids.txt"
[ "$(wc -l < "$tmp/out")" = 2 ] || { echo "FAIL: decode before the bad line printed: $(cat "$tmp/out")"; fail=1; }

# checkpoints: what an interrupted prune or latest write leaves
ck="$tmp/run/checkpoints"
cp -r "$ck/step_00000005" "$ck/step_00000003.deleting"
rm "$ck/step_00000003.deleting/model.safetensors"
cp -r "$ck/step_00000005" "$ck/step_00000002"
rm "$ck/step_00000002/model.safetensors"
expect 1 "step_00000002: incomplete checkpoint: no model.safetensors" "$GALE_BIN" inspect "$ck/step_00000002"
rm -rf "$ck/step_00000002"
sleep 0.1 & dead=$!; wait $dead
echo junk > "$ck/latest.tmp.$dead"
echo junk > "$ck/latest.tmp.$$"   # this shell is alive: kept
write_config "$tmp/more.yaml" "$tmp/run" 10 2
"$GALE_BIN" train "$tmp/more.yaml" > "$tmp/more.log" 2>&1 || { echo "FAIL: resumed training: $(tail -3 "$tmp/more.log")"; fail=1; }
[ ! -e "$ck/step_00000003.deleting" ] || { echo "FAIL: step_00000003.deleting left after a save"; fail=1; }
[ ! -e "$ck/latest.tmp.$dead" ] || { echo "FAIL: latest.tmp.$dead of a dead process left"; fail=1; }
[ -e "$ck/latest.tmp.$$" ] || { echo "FAIL: latest.tmp of a live process removed"; fail=1; }
ls "$ck" | grep -q deleting && { echo "FAIL: a .deleting folder left: $(ls "$ck")"; fail=1; }
"$GALE_BIN" inspect "$tmp/run" > /dev/null || { echo "FAIL: inspect of the run"; fail=1; }
exit $fail
