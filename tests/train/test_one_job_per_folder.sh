#!/usr/bin/env bash
# One job per folder: a second `gale train` on a run.dir in use, and a second `gale prepare`
# into an output in use, fail at once naming the holder's pid and host, and touch nothing of
# the first job's; the lock dies with its holder (kill -9), so the folder is usable after.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
fail=0
host=$(hostname)

# train: a real first job, still running when the second starts
write_config "$tmp/run.yaml" "$tmp/run" 100000 2
"$GALE_BIN" train "$tmp/run.yaml" > "$tmp/first.log" 2>&1 &
first=$!
for _ in $(seq 1 600); do
  [ -s "$tmp/run/gale.lock" ] && [ -s "$tmp/run/metrics.jsonl" ] && break
  sleep 0.1
done
start=$(date +%s)
rc=0
"$GALE_BIN" train "$tmp/run.yaml" > "$tmp/second.log" 2>&1 || rc=$?
took=$(( $(date +%s) - start ))
if [ "$rc" != 1 ] || ! grep -qF "run/gale.lock: in use by another gale train, pid $first on host $host" "$tmp/second.log"; then
  echo "FAIL: second gale train on a run.dir in use: exit $rc: $(cat "$tmp/second.log")"; fail=1
fi
if [ "$took" -gt 20 ]; then echo "FAIL: the second gale train took ${took}s to fail"; fail=1; fi
kill -0 "$first" 2>/dev/null || { echo "FAIL: the first gale train did not survive the second"; fail=1; }
kill -9 "$first"; wait "$first" 2>/dev/null || true
# the dead job's lock went with it: the folder trains again (resuming what it saved)
write_config "$tmp/after.yaml" "$tmp/run" 3 2
"$GALE_BIN" train "$tmp/after.yaml" > "$tmp/after.log" 2>&1 ||
  { echo "FAIL: gale train after the holder was killed: $(tail -3 "$tmp/after.log")"; fail=1; }
[ ! -e "$tmp/run/gale.lock" ] || { echo "FAIL: gale.lock left after a finished run"; fail=1; }

# prepare: OUT.lock held by another process; its OUT.partial is left alone
printf 'one document\n%%\nanother document\n' > "$tmp/docs.txt"
mkdir -p "$tmp/out.partial"
touch "$tmp/out.partial/first-job-file"
python3 - "$tmp/out.lock" > "$tmp/holder.pid" <<'PY' &
import fcntl, os, socket, sys, time
f = open(sys.argv[1], "w")
fcntl.flock(f, fcntl.LOCK_EX)
f.write(f"{os.getpid()} {socket.gethostname()}\n"); f.flush()
print(os.getpid(), flush=True)
time.sleep(60)
PY
holder=$!
for _ in $(seq 1 100); do [ -s "$tmp/out.lock" ] && break; sleep 0.1; done
rc=0
"$GALE_BIN" prepare --input "$tmp/docs.txt" --tokenizer "$GALE_SHARED/tokenizers/mistral-v1.model" --out "$tmp/out" \
  --text-mode separator --seq-len 16 > "$tmp/prep.log" 2>&1 || rc=$?
if [ "$rc" != 1 ] || ! grep -qF "out.lock: in use by another gale prepare, pid $holder on host $host" "$tmp/prep.log"; then
  echo "FAIL: gale prepare into an output in use: exit $rc: $(cat "$tmp/prep.log")"; fail=1
fi
[ -e "$tmp/out.partial/first-job-file" ] || { echo "FAIL: the second prepare removed the first's OUT.partial"; fail=1; }
kill -9 "$holder"; wait "$holder" 2>/dev/null || true
"$GALE_BIN" prepare --input "$tmp/docs.txt" --tokenizer "$GALE_SHARED/tokenizers/mistral-v1.model" --out "$tmp/out" \
  --text-mode separator --seq-len 16 > "$tmp/prep.log" 2>&1 ||
  { echo "FAIL: gale prepare after the holder was killed: $(cat "$tmp/prep.log")"; fail=1; }
[ -f "$tmp/out/manifest.json" ] && [ ! -e "$tmp/out.lock" ] || { echo "FAIL: prepare's output or lock"; fail=1; }
exit $fail
