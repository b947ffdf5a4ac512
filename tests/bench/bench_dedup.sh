#!/usr/bin/env bash
# bench_dedup: gale prepare's exact + near dedup against datasketch's MinHashLSH on real
# documents (man pages, fortunes) with planted duplicates: precision, recall and speed.
#   tests/bench/bench_dedup.sh [BUILD_DIR] [BASE_DOCS]
# Needs python3 with datasketch (installed here with pip when missing). Targets: recall
# >= 0.95 on pairs with Jaccard >= 0.85, precision >= 0.99, >= 10x datasketch's speed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
base_docs=${2:-10000}
work=$root/.bench/dedup
mkdir -p "$work"
python3 -c "import datasketch" 2>/dev/null || python3 -m pip install -q datasketch
[ -s "$work/corpus.jsonl" ] || python3 "$here/prepare_corpus.py" "$work/corpus.jsonl"
python3 "$here/bench_dedup.py" --gale "$build/gale" --tokenizer "$root/../shared/tokenizers/mistral-v1.model" \
  --corpus "$work/corpus.jsonl" --work "$work" --base-docs "$base_docs" --json "$work/results.json"
