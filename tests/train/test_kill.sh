#!/usr/bin/env bash
# test_kill: SIGKILL at arbitrary moments of a run that checkpoints every step never leaves
# `latest` naming a damaged checkpoint: after each kill the latest checkpoint loads whole
# (gale eval reads its weights, gale inspect its state) and the run resumes from it.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
write_config "$tmp/run.yaml" "$tmp/run" 100000 4
sed -i 's/checkpoint_every: 5/checkpoint_every: 1/' "$tmp/run.yaml"
delays=(0.9 1.3 0.7 1.1 1.6)
for d in "${delays[@]}"; do
  "$GALE_BIN" train "$tmp/run.yaml" > "$tmp/log" 2>&1 &
  pid=$!
  sleep "$d"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ -f "$tmp/run/checkpoints/latest" ] || continue  # killed before its first checkpoint
  latest=$(cat "$tmp/run/checkpoints/latest")
  "$GALE_BIN" inspect "$tmp/run" > /dev/null || { echo "FAIL: $latest unreadable after SIGKILL"; exit 1; }
  "$GALE_BIN" eval --checkpoint "$tmp/run" --data "$tmp/data" --batch-rows 4 --max-batches 1 > /dev/null ||
    { echo "FAIL: $latest weights unreadable after SIGKILL"; exit 1; }
done
[ -f "$tmp/run/checkpoints/latest" ] || { echo "FAIL: no checkpoint in ${#delays[@]} runs"; exit 1; }
step=$(sed 's/step_0*//' "$tmp/run/checkpoints/latest")
"$GALE_BIN" train "$tmp/run.yaml" --stop-at $((step + 1)) > "$tmp/log"
grep -q "resuming from .*: step $step" "$tmp/log"
# no step appears twice in the metrics after all the kills and resumes
python3 - "$tmp/run/metrics.jsonl" <<'PY'
import json, sys
steps = [json.loads(l)["step"] for l in open(sys.argv[1]) if '"train"' in l]
assert steps == list(range(1, len(steps) + 1)), steps
PY
echo "kill: latest stayed whole through ${#delays[@]} SIGKILLs (reached step $((step + 1)))"
