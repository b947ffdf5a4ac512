#!/usr/bin/env bash
# test_resume: `gale train` resumes exactly. 16 steps straight; 8 steps (--stop-at) then a
# resume; and a run interrupted by SIGINT at an arbitrary step then resumed: all three give
# IDENTICAL losses at every step and byte-identical weights and moments at the end. A
# crash between checkpoints leaves metrics.jsonl without duplicated steps after the resume.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
steps=16
write_config "$tmp/run.yaml" "$tmp/straight" $steps 4
"$GALE_BIN" train "$tmp/run.yaml" > "$tmp/straight.log"

write_config "$tmp/half.yaml" "$tmp/half" $steps 4
"$GALE_BIN" train "$tmp/half.yaml" --stop-at 8 > "$tmp/half1.log"
grep -q "stopped after step 8 (--stop-at 8)" "$tmp/half1.log"
"$GALE_BIN" train "$tmp/half.yaml" > "$tmp/half.log"
grep -q "resuming from .*step_00000008: step 8" "$tmp/half.log"

write_config "$tmp/int.yaml" "$tmp/int" $steps 4
"$GALE_BIN" train "$tmp/int.yaml" > "$tmp/int.log" &
pid=$!
for _ in $(seq 2000); do grep -q '^step *[0-9]*/' "$tmp/int.log" 2>/dev/null && break; sleep 0.005; done
kill -INT "$pid"
wait "$pid" || { echo "FAIL: SIGINT did not end gale train cleanly"; cat "$tmp/int.log"; exit 1; }
grep -q "(SIGINT)" "$tmp/int.log" || { echo "FAIL: no SIGINT stop (the run ended first?)"; tail "$tmp/int.log"; exit 1; }
stopped=$(sed -n 's/^stopped after step \([0-9]*\).*/\1/p' "$tmp/int.log")
[ "$(cat "$tmp/int/checkpoints/latest")" = "$(printf 'step_%08d' "$stopped")" ]
"$GALE_BIN" train "$tmp/int.yaml" > /dev/null

# a crash after step 16 but before its checkpoint: the records of steps past the resumed
# checkpoint are dropped and redone, not duplicated
cp -r "$tmp/straight" "$tmp/crash"
rm -rf "$tmp/crash/checkpoints/step_00000016"
echo step_00000015 > "$tmp/crash/checkpoints/latest"
write_config "$tmp/crash.yaml" "$tmp/crash" $steps 4
"$GALE_BIN" train "$tmp/crash.yaml" > "$tmp/crash.log"
grep -q "resuming from .*step_00000015: step 15" "$tmp/crash.log"

# rewinding `latest` to step 15 with step 16 still there: the rerun replaces step 16
cp -r "$tmp/straight" "$tmp/rewind"
echo step_00000015 > "$tmp/rewind/checkpoints/latest"
touch "$tmp/rewind/checkpoints/step_00000016/old-marker"
write_config "$tmp/rewind.yaml" "$tmp/rewind" $steps 4
"$GALE_BIN" train "$tmp/rewind.yaml" > /dev/null
[ ! -e "$tmp/rewind/checkpoints/step_00000016/old-marker" ] || { echo "FAIL: step 16 not replaced"; exit 1; }
[ "$(cat "$tmp/rewind/checkpoints/latest")" = step_00000016 ]
cmp "$tmp/straight/checkpoints/step_00000016/model.safetensors" "$tmp/rewind/checkpoints/step_00000016/model.safetensors"
[ -z "$(ls "$tmp/rewind/checkpoints" | grep tmp)" ]

losses "$tmp/straight" > "$tmp/a"
losses "$tmp/crash" > "$tmp/d"
diff "$tmp/a" "$tmp/d" || { echo "FAIL: metrics after a crash and resume differ from straight"; exit 1; }
losses "$tmp/half" > "$tmp/b"
losses "$tmp/int" > "$tmp/c"
[ "$(wc -l < "$tmp/a")" -eq $steps ] || { echo "FAIL: $(wc -l < "$tmp/a") steps recorded"; exit 1; }
diff "$tmp/a" "$tmp/b" || { echo "FAIL: stop at 8 + resume differs from straight"; exit 1; }
diff "$tmp/a" "$tmp/c" || { echo "FAIL: SIGINT at $stopped + resume differs from straight"; exit 1; }
last=$(printf 'step_%08d' $steps)
for f in model.safetensors optimizer.safetensors; do
  cmp "$tmp/straight/checkpoints/$last/$f" "$tmp/half/checkpoints/$last/$f"
  cmp "$tmp/straight/checkpoints/$last/$f" "$tmp/int/checkpoints/$last/$f"
done
# keep_last 2 of checkpoint_every 5: steps 15 and 16 remain
[ "$(ls "$tmp/straight/checkpoints" | grep '^step_' | tr '\n' ' ')" = "step_00000015 step_00000016 " ]
echo "resume: $steps identical losses (stop at 8; SIGINT at $stopped), identical weights"
