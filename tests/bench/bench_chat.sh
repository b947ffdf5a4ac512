#!/usr/bin/env bash
# Chat template throughput: `gale tokenize --chat v3 --prompt` over the chat vectors' samples
# repeated N times (one JSON conversation per line), against plain `gale tokenize` of the same
# bytes as text (the tokenizer alone, one thread), so the template's own cost shows. The ids
# must equal the vectors' tokens_v3.json, repeated, else it fails.
#
#   bash tests/bench/bench_chat.sh [--build DIR] [--copies N]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(cd "$here/../.." && pwd)"
build="${GALE_BUILD:-$source_dir/build}"
shared="${GALE_SHARED:-$source_dir/../shared}"
copies=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --copies) copies="$2"; shift 2 ;;
    *) echo "usage: bench_chat.sh [--build DIR] [--copies N]" >&2; exit 2 ;;
  esac
done
gale="$build/gale"
model="$shared/tokenizers/mistral-v3.model"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

/usr/bin/python3 - "$shared/tokenizers/chat-vectors" "$copies" "$tmp" <<'EOF'
import json, os, sys
vectors, copies, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
samples, tokens = [], []
for name in sorted(os.listdir(vectors)):
    folder = os.path.join(vectors, name)
    if os.path.exists(os.path.join(folder, "tokens_v3.json")):
        samples.append(json.dumps(json.load(open(os.path.join(folder, "sample.json"))), ensure_ascii=False))
        tokens.append(" ".join(map(str, json.load(open(os.path.join(folder, "tokens_v3.json")))["tokens"])))
with open(os.path.join(out, "chat.jsonl"), "w") as f:
    f.write(("\n".join(samples) + "\n") * copies)
with open(os.path.join(out, "want.txt"), "w") as f:
    f.write(("\n".join(tokens) + "\n") * copies)
EOF

lines=$(wc -l < "$tmp/chat.jsonl")
bytes=$(wc -c < "$tmp/chat.jsonl")
start=$(date +%s.%N)
"$gale" tokenize --tokenizer "$model" --chat v3 --prompt --input "$tmp/chat.jsonl" > "$tmp/got.txt"
chat_s=$(echo "$(date +%s.%N) - $start" | bc)
cmp -s "$tmp/got.txt" "$tmp/want.txt" || { echo "FAIL: ids differ from the vectors"; exit 1; }
start=$(date +%s.%N)
"$gale" tokenize --tokenizer "$model" --input "$tmp/chat.jsonl" > "$tmp/text.txt"
text_s=$(echo "$(date +%s.%N) - $start" | bc)
ids=$(wc -w < "$tmp/got.txt")
echo "conversations: $lines ($bytes bytes of JSONL), ids: $ids"
printf 'chat v3:    %.3f s  %.0f conversations/s  %.2f M ids/s\n' "$chat_s" \
  "$(echo "$lines / $chat_s" | bc -l)" "$(echo "$ids / $chat_s / 1000000" | bc -l)"
printf 'plain text: %.3f s  (the same bytes through the tokenizer alone)\n' "$text_s"
