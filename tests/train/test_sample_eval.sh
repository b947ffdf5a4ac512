#!/usr/bin/env bash
# test_sample_eval: `gale eval` of a checkpoint equals the evaluation the trainer logged at
# that step; `gale sample` is reproducible (greedy, and seeded sampling), stops after
# --max-new, takes a run folder or a checkpoint, wraps --chat prompts, and refuses bad input;
# `gale inspect` summarises the checkpoint.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
write_config "$tmp/run.yaml" "$tmp/run" 6 4
"$GALE_BIN" train "$tmp/run.yaml" --set run.eval_every=6 --set run.eval_batches=3 > "$tmp/train.log"
"$GALE_BIN" eval --checkpoint "$tmp/run" --data "$tmp/data" --batch-rows 4 > "$tmp/eval.txt"
python3 - "$tmp/run/metrics.jsonl" "$tmp/eval.txt" <<'PY'
import json, re, sys
logged = [json.loads(l) for l in open(sys.argv[1]) if '"eval"' in l][-1]
text = open(sys.argv[2]).read()
loss = float(re.search(r"^loss +(\S+)", text, re.M).group(1))
assert logged["step"] == 6, logged
assert abs(loss - logged["val_loss"]) <= 1e-7 * loss, (loss, logged["val_loss"])
assert "targets    %d" % logged["val_targets"] in text, text
PY
"$GALE_BIN" eval --checkpoint "$tmp/run/checkpoints/step_00000006" --data "$tmp/data" --split train --max-batches 2 | grep -q "train (2 batches of 8 rows)"

ckpt="$tmp/run/checkpoints/step_00000006"
# gale inspect summarises a run folder's latest checkpoint
"$GALE_BIN" inspect "$tmp/run" > "$tmp/inspect.txt"
grep -q "^step  *6$" "$tmp/inspect.txt"
grep -q "^parameters  *2091424$" "$tmp/inspect.txt"
grep -q "4 experts top-2" "$tmp/inspect.txt"
"$GALE_BIN" sample --checkpoint "$tmp/run" --prompt "one two" --temperature 0 --max-new 12 > "$tmp/g1" 2> "$tmp/g1.err"
"$GALE_BIN" sample --checkpoint "$ckpt" --prompt "one two" --temperature 0 --max-new 12 > "$tmp/g2" 2> /dev/null
cmp "$tmp/g1" "$tmp/g2"
grep -Eq "^\[3 prompt tokens, ([0-9]|1[0-2]) generated" "$tmp/g1.err" || { cat "$tmp/g1.err"; exit 1; }
"$GALE_BIN" sample --checkpoint "$ckpt" --prompt "one" --seed 7 --top-p 0.9 --max-new 10 > "$tmp/s1" 2> /dev/null
"$GALE_BIN" sample --checkpoint "$ckpt" --prompt "one" --seed 7 --top-p 0.9 --max-new 10 > "$tmp/s2" 2> /dev/null
cmp "$tmp/s1" "$tmp/s2"
"$GALE_BIN" sample --checkpoint "$ckpt" --prompt "Hi" --chat --max-new 4 > /dev/null 2> "$tmp/chat.err"
# [INST] Hi [/INST] with BOS is more than the 2 ids of plain "Hi"
grep -Eq "^\[([4-9]|[1-9][0-9]) prompt tokens" "$tmp/chat.err"

# the tiny model has 64 positions
if "$GALE_BIN" sample --checkpoint "$ckpt" --prompt "$(seq 1 80 | tr '\n' ' ')" 2> "$tmp/err"; then exit 1; fi
grep -q "no room before max_position_embeddings (64)" "$tmp/err"
if "$GALE_BIN" sample --checkpoint "$tmp/nowhere" --prompt x 2> "$tmp/err"; then exit 1; fi
grep -q "nowhere" "$tmp/err"
if "$GALE_BIN" sample --checkpoint "$ckpt" --prompt x --top-p 2 2> "$tmp/err"; then exit 1; fi
grep -q -- "--top-p needs a number" "$tmp/err"
if "$GALE_BIN" eval --checkpoint "$ckpt" 2> "$tmp/err"; then exit 1; fi
grep -q -- "--data are required" "$tmp/err"
"$GALE_BIN" sample --help | grep "usage: gale" | grep -qF "usage: gale sample"
"$GALE_BIN" eval --help | grep "usage: gale" | grep -qF "usage: gale eval"
echo "sample_eval: eval equals the logged evaluation; sampling reproducible"
