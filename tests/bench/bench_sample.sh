#!/usr/bin/env bash
# Generation speed on the CPU, gale sample vs transformers' generate(), both with a KV cache,
# greedy, fp32, on the same random model (made by transformers, saved, loaded by both), with
# the same thread count K (OMP_NUM_THREADS=K for gale, torch.set_num_threads(K) for torch).
# For each generation length N: gale's tokens/s as `gale sample` reports it (the draws and
# one-token forwards after the prompt), and transformers' (N / the time of generate() less
# the time of its prefill, measured as generate() of one token). Both generate N tokens unless
# gale draws EOS first (rare with random weights: the count is printed). Greedy ids of the two
# are compared too (the first position where they differ, if any).
#
#   bash tests/bench/setup_bench.sh      # once: Debian's python3-torch and transformers
#   bash tests/bench/bench_sample.sh [--build DIR] [--threads "1 2"] [--lengths "128 512"]
#                                    [--hidden 512] [--layers 8] [--prompt-tokens 32]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(cd "$here/../.." && pwd)"
build="${GALE_BUILD:-$source_dir/build}"
shared="${GALE_SHARED:-$source_dir/../shared}"
thread_counts="1 2"
lengths="128 512"
hidden=512
layers=8
prompt_tokens=32
py=/usr/bin/python3

while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --threads) thread_counts="$2"; shift 2 ;;
    --lengths) lengths="$2"; shift 2 ;;
    --hidden) hidden="$2"; shift 2 ;;
    --layers) layers="$2"; shift 2 ;;
    --prompt-tokens) prompt_tokens="$2"; shift 2 ;;
    *) echo "bench_sample: unknown argument $1" >&2; exit 2 ;;
  esac
done
gale="$build/gale"
tok="$shared/tokenizers/mistral-v1.model"
$py -c "import torch, transformers" || { echo "bench_sample: run tests/bench/setup_bench.sh first" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# a prompt of about prompt_tokens tokens
prompt=$(seq 1 "$prompt_tokens" | tr '\n' ' ' | cut -c1-"$prompt_tokens")
ids=$(echo "$prompt" | "$gale" tokenize --tokenizer "$tok")
max_len=$(( $(echo "$lengths" | tr ' ' '\n' | sort -n | tail -1) + prompt_tokens * 2 + 8 ))
$py - "$tmp/model" "$hidden" "$layers" "$max_len" <<'PY'
import sys, torch
from transformers import AutoModelForCausalLM, MistralConfig
out, hidden, layers, max_len = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = MistralConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                    num_hidden_layers=layers, num_attention_heads=hidden // 64,
                    num_key_value_heads=max(1, hidden // 256), max_position_embeddings=max_len,
                    sliding_window=None, initializer_range=0.2, bos_token_id=1, eos_token_id=2)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(cfg).float().save_pretrained(out)
PY
echo "model: Mistral shape, hidden $hidden, $layers layers, vocab 32000, fp32; prompt $(echo "$ids" | wc -w) tokens + BOS"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-8s %-7s %-22s %-26s %s\n" threads new "gale tokens/s" "transformers tokens/s" "greedy ids"
for k in $thread_counts; do
  for n in $lengths; do
    OMP_NUM_THREADS=$k OPENBLAS_NUM_THREADS=1 "$gale" sample --checkpoint "$tmp/model" --tokenizer "$tok" \
      --prompt "$prompt" --temperature 0 --max-new "$n" > "$tmp/gale.txt" 2> "$tmp/gale.err"
    gale_rate=$(sed -n 's/.*generation \([0-9.]*\) tokens\/s.*/\1/p' "$tmp/gale.err")
    gale_n=$(sed -n 's/.*prompt tokens, \([0-9]*\) generated.*/\1/p' "$tmp/gale.err")
    hf=$(OMP_NUM_THREADS=$k $py - "$tmp/model" "$n" "$k" "$ids" <<'PY'
import sys, time, torch
from transformers import AutoModelForCausalLM
path, n, k, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(k)
model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
x = torch.tensor([[1] + [int(t) for t in prompt.split()]])
def run(new):
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    return time.perf_counter() - t, out[0, x.shape[1]:].tolist()
run(4)  # warm-up
prefill, _ = run(1)
total, ids = run(n)
print("%.1f %s" % (n / (total - prefill), " ".join(map(str, ids))))
PY
)
    hf_rate=${hf%% *}
    hf_ids=${hf#* }
    "$gale" tokenize --tokenizer "$tok" --decode <<< "$hf_ids" > "$tmp/hf_text.txt"
    same=$(python3 - "$tmp/gale.txt" "$tmp/hf_text.txt" "$prompt" <<'PY'
import sys
g = open(sys.argv[1], encoding="utf-8", errors="replace").read()[len(sys.argv[3]):].rstrip("\n")
h = open(sys.argv[2], encoding="utf-8", errors="replace").read().rstrip("\n")
if h.startswith(g):
    print("same text" if len(g) == len(h) else "same text for gale's %d chars" % len(g))
else:
    i = next(i for i in range(min(len(g), len(h))) if g[i] != h[i])
    print("text differs at char %d" % i)
PY
)
    printf "%-8s %-7s %-22s %-26s %s\n" "$k" "$gale_n/$n" "$gale_rate" "$hf_rate" "$same"
  done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
