#!/usr/bin/env bash
# test_prepare_mpi: `mpirun -np N gale prepare` keeps exactly the same documents for N = 1,
# 2 and 3: the --removed files are byte-identical (global input order, duplicates pointing
# at the same kept documents), and report.json agrees on every document count and on the
# documents and tokens of each split. The corpus is six real fortune files (with natural
# exact and near duplicates across them) and a gzip JSONL file, last in input order, of
# edited copies of fortunes from the first file, so duplicates cross rank boundaries, and a
# big plain JSONL file that 2 and 3 ranks read by byte ranges. The 2-rank run spills all
# dedup state to disk. A run with more ranks than files (ranks without input) must work too.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}"
F=/usr/share/games/fortunes
for f in computers cookie fortunes linux linuxcookie people; do
  [ -r "$F/$f" ] || { echo "SKIP: $F/$f not installed (fortunes package)"; exit 77; }
done
command -v mpirun >/dev/null || { echo "SKIP: no mpirun"; exit 77; }

work=$(mktemp -d /tmp/gale-test-mpi-XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"

# planted copies of the first file's fortunes: exact (upper case) and near (one word dropped)
python3 - "$F/computers" <<'EOF'
import gzip, json, sys
docs = [d.strip() for d in open(sys.argv[1], encoding="utf-8", errors="replace").read().split("\n%\n")]
docs = [d for d in docs if len(d.split()) >= 30][:60]
with gzip.open("planted.jsonl.gz", "wt", encoding="utf-8") as f:
    for i, d in enumerate(docs):
        if i % 2:
            f.write(json.dumps({"text": d.upper()}) + "\n")
        else:
            w = d.split()
            del w[len(w) // 2]
            f.write(json.dumps({"text": " ".join(w)}) + "\n")
EOF

# one big uncompressed JSONL file, more than half of all input bytes, so that 2 and 3 ranks
# read it by byte ranges: every fortune of the six files again (exact duplicates) with every
# third one's numbers changed (near duplicates after digit folding), and blank lines
python3 - "$F" <<'EOF'
import json, re, sys
with open("big.jsonl", "w", encoding="utf-8") as out:
    for name in ("computers", "cookie", "fortunes", "linux", "linuxcookie", "people"):
        docs = open(f"{sys.argv[1]}/{name}", encoding="utf-8", errors="replace").read().split("\n%\n")
        for i, d in enumerate(docs):
            if i % 3 == 0:
                d = re.sub(r"[0-9]", "7", d) + " 1999"
            out.write(json.dumps({"text": d, "n": i}) + "\n")
            if i % 50 == 0:
                out.write("\n")
EOF

inputs=("$F/computers" "$F/cookie" "$F/fortunes" "$F/linux" "$F/linuxcookie" "$F/people" planted.jsonl.gz big.jsonl)
big=$(stat -c %s big.jsonl); all=$(cat "${inputs[@]}" | wc -c)
[ $((2 * big)) -gt "$all" ] || { echo "FAIL: big.jsonl is not the larger half of the input"; exit 1; }
export OMP_NUM_THREADS=1
for np in 1 2 3; do
  # 2 ranks with no memory for dedup: every band key and shingle set goes through the spill files
  memory=1024; [ $np = 2 ] && memory=0
  mpirun --allow-run-as-root --oversubscribe -np $np "$GALE_BIN" prepare --input "${inputs[@]}" \
    --tokenizer "$GALE_SHARED/tokenizers/mistral-v1.model" --out "out$np" --text-mode separator \
    --seq-len 256 --shard-rows 200 --removed "removed$np.jsonl" --dedup-memory-mb $memory --progress off 2> "log$np" \
    || { cat "log$np"; echo "FAIL: mpirun -np $np"; exit 1; }
done
# more ranks than files: ranks 1 and 2 of 3 read nothing
mpirun --allow-run-as-root --oversubscribe -np 3 "$GALE_BIN" prepare --input "$F/computers" \
  --tokenizer "$GALE_SHARED/tokenizers/mistral-v1.model" --out few --text-mode separator --progress off 2> logfew \
  || { cat logfew; echo "FAIL: 3 ranks, 1 file"; exit 1; }

for np in 2 3; do
  cmp removed1.jsonl "removed$np.jsonl" || { echo "FAIL: removed documents differ between 1 and $np ranks"; exit 1; }
done
python3 - <<'EOF'
import json, sys
reports = {np: json.load(open(f"out{np}/report.json")) for np in (1, 2, 3)}
base = reports[1]
removed = [json.loads(l) for l in open("removed1.jsonl")]
planted = [r for r in removed if r["source"] == "planted.jsonl.gz"]
if len(planted) < 55:
    sys.exit(f"FAIL: only {len(planted)} of 60 planted copies removed")
if reports[2]["near_dedup"]["spilled_bytes"] == 0:
    sys.exit("FAIL: the 2-rank run with --dedup-memory-mb 0 spilled nothing")
if any(r["duplicate_of"]["source"] != "/usr/share/games/fortunes/computers" for r in planted):
    sys.exit("FAIL: a planted copy points at a document outside the file it was copied from")
for np, r in reports.items():
    if r["ranks"] != np:
        sys.exit(f"FAIL: report of {np} ranks says ranks={r['ranks']}")
    if r["documents"] != base["documents"]:
        sys.exit(f"FAIL: document counts differ with {np} ranks: {r['documents']} vs {base['documents']}")
    for split in ("train", "val"):
        for key in ("documents", "tokens"):
            if r["splits"][split][key] != base["splits"][split][key]:
                sys.exit(f"FAIL: {split} {key} differ with {np} ranks")
    shards = json.load(open(f"out{np}/manifest.json"))["shards"]
    if np > 1 and len({s["file"] for s in shards}) < np:
        sys.exit(f"FAIL: {np} ranks wrote {len(shards)} shards")
d = base["documents"]
if d["exact_duplicates"] < 30 or d["near_duplicates"] < 30:
    sys.exit(f"FAIL: too few duplicates found: {d}")
print(f"same documents with 1, 2 and 3 ranks: {d}")
EOF
echo "test_prepare_mpi: ok"
