#!/usr/bin/env bash
# test_prepare_kill: `gale prepare` killed (SIGKILL) in the middle of writing shards leaves
# no output folder at all, only OUT.partial; the rerun removes it, and its result equals a
# run that was never interrupted: same report counts, same shards (rows, documents, tokens)
# and no temporary file left behind.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}"
F=/usr/share/games/fortunes
[ -r "$F/fortunes" ] || { echo "SKIP: $F not installed (fortunes package)"; exit 77; }

work=$(mktemp -d /tmp/gale-test-kill-XXXXXX)
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"

args=(--input "$F"/computers "$F"/fortunes "$F"/literature "$F"/people "$F"/wisdom "$F"/linuxcookie
      --tokenizer "$GALE_SHARED/tokenizers/mistral-v1.model" --text-mode separator --seq-len 64
      --shard-rows 24 --threads 1 --progress off)

"$GALE_BIN" prepare "${args[@]}" --out ref 2> ref.log || { cat ref.log; echo "FAIL: reference run"; exit 1; }

# kill once some shards are finished, while others are being written
"$GALE_BIN" prepare "${args[@]}" --out out 2> killed.log &
pid=$!
for _ in $(seq 1 3000); do
  n=$(ls out.partial 2>/dev/null | grep -c '^train-.*\.h5$' || true)
  [ "$n" -ge 3 ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.01
done
kill -9 "$pid" 2>/dev/null || { echo "FAIL: the run ended before it could be killed; make the corpus bigger"; exit 1; }
wait "$pid" 2>/dev/null || true
pid=
[ ! -e out ] || { echo "FAIL: out/ exists after the kill"; ls -la out; exit 1; }
[ -d out.partial ] || { echo "FAIL: no out.partial after the kill"; exit 1; }
echo "killed with $(ls out.partial | grep -c '\.h5$') shards in out.partial"

"$GALE_BIN" prepare "${args[@]}" --out out 2> rerun.log || { cat rerun.log; echo "FAIL: rerun"; exit 1; }
grep -q "left by an interrupted run" rerun.log || { cat rerun.log; echo "FAIL: the rerun did not say it removed out.partial"; exit 1; }
[ ! -e out.partial ] || { echo "FAIL: out.partial left after the rerun"; exit 1; }
if ls -a out | grep -q 'tmp'; then echo "FAIL: temporary files in out/"; ls -a out; exit 1; fi

python3 - <<'EOF'
import json, sys
def shards(d):
    m = json.load(open(f"{d}/manifest.json"))
    return [(s["file"], s["split"], s["rows"], s["n_docs"], s["n_real_tokens"]) for s in m["shards"]]
def counts(d):
    r = json.load(open(f"{d}/report.json"))
    return r["documents"], r["splits"]
if shards("ref") != shards("out"):
    sys.exit("FAIL: the rerun's shards differ from the reference run's")
if counts("ref") != counts("out"):
    sys.exit("FAIL: the rerun's report differs from the reference run's")
print(f"rerun equals the uninterrupted run: {len(shards('out'))} shards")
EOF
echo "test_prepare_kill: ok"
