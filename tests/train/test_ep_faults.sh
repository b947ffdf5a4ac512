#!/usr/bin/env bash
# test_ep_faults: a rank killed (SIGKILL) in the middle of an expert-parallel run (ep=2, the
# other rank then waits in an all-to-all or all-reduce) ends the whole job, non-zero, within
# seconds rather than hanging; the latest checkpoint stays whole and the run resumes from it.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
source "$GALE_SOURCE/tests/train/mpi_flags.sh"
write_config "$tmp/run.yaml" "$tmp/run" 100000 2
sed -i 's/checkpoint_every: 5/checkpoint_every: 1/' "$tmp/run.yaml"
# through the local launcher, which execs mpirun
GALE="$GALE_BIN" "$GALE_SOURCE/launch/train_mpi.sh" 2 "$tmp/run.yaml" --set parallel.ep=2 > "$tmp/log" 2>&1 &
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
