#!/usr/bin/env bash
# test_kill: SIGKILL at arbitrary moments of a run that checkpoints every step never leaves
# `latest` naming a damaged checkpoint: after each kill the latest checkpoint loads whole
# (gale eval reads its weights, gale inspect its state) and the run resumes from it.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
write_config "$tmp/run.yaml" "$tmp/run" 100000 4
sed -i 's/checkpoint_every: 5/checkpoint_every: 1/' "$tmp/run.yaml"
# after the first checkpoint of each run, a kill lands at an arbitrary later moment
delays=(0.05 0.23 0.11 0.37 0.17)
for d in "${delays[@]}"; do
  "$GALE_BIN" train "$tmp/run.yaml" > "$tmp/log" 2>&1 &
  pid=$!
  for _ in $(seq 3000); do grep -q '^checkpoint ' "$tmp/log" 2>/dev/null && break; sleep 0.01; done
  sleep "$d"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  latest=$(cat "$tmp/run/checkpoints/latest")
  "$GALE_BIN" inspect "$tmp/run" > /dev/null || { echo "FAIL: $latest unreadable after SIGKILL"; exit 1; }
  "$GALE_BIN" eval --checkpoint "$tmp/run" --data "$tmp/data" --batch-rows 4 --max-batches 1 > /dev/null ||
    { echo "FAIL: $latest weights unreadable after SIGKILL"; exit 1; }
done
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
