#!/usr/bin/env bash
# bench_prepare: `gale prepare` end to end on real text (English man pages and Debian
# fortunes as JSONL, ~100 MB in eight files; prepare_corpus.py): MB/s of raw input per core
# (input bytes over the CPU seconds of both passes, all threads) and per wall second, with 1
# and all threads and with 2 MPI ranks, and the shards' compression ratio (uncompressed
# /tokens and /segments bytes over the shard files' bytes).
#   tests/bench/bench_prepare.sh [BUILD_DIR] [MAX_DOCS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
max_docs=${2:-0}
work=$root/.bench/prepare
mkdir -p "$work"
corpus=$work/corpus-$max_docs.jsonl
[ -s "$corpus" ] || python3 "$here/prepare_corpus.py" "$corpus" --max-docs "$max_docs"
# eight files, so that MPI ranks (which split the inputs by file) each have work
parts=$work/parts-$max_docs
if [ ! -s "$parts/part-7.jsonl" ]; then
  mkdir -p "$parts"
  python3 -c '
import sys
lines = open(sys.argv[1], encoding="utf-8").readlines()
k = (len(lines) + 7) // 8
for i in range(8):
    open(f"{sys.argv[2]}/part-{i}.jsonl", "w", encoding="utf-8").writelines(lines[i * k:(i + 1) * k])
' "$corpus" "$parts"
fi
tok=$root/../shared/tokenizers/mistral-v1.model
cores=$(nproc)

run() { # name, threads, launcher words before `gale`
  local name=$1 threads=$2; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  "$@" "$build/gale" prepare --input "$parts"/part-*.jsonl --tokenizer "$tok" --out "$work/out-$name" \
    --overwrite --seq-len 2048 --threads "$threads" --progress off 2> "$work/log-$name"
  t1=$(date +%s.%N)
  python3 - "$work/out-$name" "$name" "$(echo "$t1 - $t0" | bc)" <<'EOF'
import json, os, sys
out, name, wall = sys.argv[1], sys.argv[2], float(sys.argv[3])
r = json.load(open(f"{out}/report.json"))
m = json.load(open(f"{out}/manifest.json"))
mb = r["inputs"]["bytes"] / 1e6
cpu = r["cpu_seconds"]["read_dedup"] + r["cpu_seconds"]["tokenize_pack"]
S = m["seq_len"] + 1
rows = sum(s["rows"] for s in m["shards"])
token_bytes = 2 if m["tokenizer"]["vocab_size"] <= 65536 else 4
raw = rows * S * (token_bytes + 2)
stored = sum(os.path.getsize(f"{out}/{s['file']}") for s in m["shards"])
tokens = sum(r["splits"][k]["tokens"] for k in ("train", "val"))
d = r["documents"]
print(f"| {name} | {mb:.1f} | {d['read']} | {d['exact_duplicates']} / {d['near_duplicates']} | {tokens} | "
      f"{wall:.1f} | {mb / wall:.1f} | {r['cpu_seconds']['read_dedup']:.1f} + {r['cpu_seconds']['tokenize_pack']:.1f} | "
      f"{mb / cpu:.1f} | {raw / stored:.2f} ({stored / 1e6:.1f} MB) |")
EOF
}

echo "| run | input MB | docs | exact / near removed | tokens | wall s | MB/s wall | CPU s (read+dedup + tokenize+pack) | MB/s per core | shard compression (raw/stored) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
run threads-1 1
run "threads-$cores" "$cores"
# idle ranks yield their core instead of spinning, so CPU seconds count work
OMPI_MCA_mpi_yield_when_idle=1 run mpi-2x1 1 mpirun --allow-run-as-root --oversubscribe -np 2
