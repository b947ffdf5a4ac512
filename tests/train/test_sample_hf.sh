#!/usr/bin/env bash
# test_sample_hf: `gale sample --temperature 0` (KV-cache generation) writes the text of
# transformers' greedy generate() (its own KV cache) for random Llama (GQA) and Mixtral models
# that transformers made and saved: 80 new tokens after a 12-token prompt, same ids, so the
# same text. Weights at std 0.2 keep the argmax margins far above fp32 rounding. No sliding
# window here: transformers 4.40 (the version for Debian's torch) lets a query see W + 1 keys,
# one more than the hub's later versions and the golden fixtures; test_kv_cache checks windows
# against the fixtures. Needs torch and transformers for /usr/bin/python3, else skips.
set -euo pipefail
: "${GALE_BIN:?run through ctest, or set GALE_BIN and GALE_SHARED}"
py=/usr/bin/python3
if ! $py -c "import torch, transformers" 2>/dev/null; then
  echo "SKIP: /usr/bin/python3 lacks torch or transformers"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tok="${GALE_SHARED:?}/tokenizers/mistral-v1.model"
prompt="The quick brown fox jumps over the lazy dog"
new=80
# gale sample encodes the prompt as BOS + these ids
echo "$prompt" | "$GALE_BIN" tokenize --tokenizer "$tok" > "$tmp/prompt.ids"

for kind in llama mixtral; do
  $py - "$kind" "$tmp/$kind" "$new" "$(cat "$tmp/prompt.ids")" > "$tmp/$kind.hf.ids" <<'PY'
import sys, torch
from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig
kind, out, new, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
shape = dict(vocab_size=32000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             initializer_range=0.2, bos_token_id=1, eos_token_id=2)
cfg = (LlamaConfig(**shape) if kind == "llama"
       else MixtralConfig(num_local_experts=4, num_experts_per_tok=2, sliding_window=None, **shape))
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
model.save_pretrained(out)
ids = [1] + [int(x) for x in prompt.split()]  # BOS, as gale sample adds it
with torch.no_grad():
    gen = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False, eos_token_id=2,
                         pad_token_id=0)
print(" ".join(str(int(t)) for t in gen[0, len(ids):] if int(t) != 2))
PY
  "$GALE_BIN" sample --checkpoint "$tmp/$kind" --tokenizer "$tok" --prompt "$prompt" \
    --temperature 0 --max-new "$new" > "$tmp/$kind.gale.txt" 2> "$tmp/$kind.err"
  { printf '%s' "$prompt"; "$GALE_BIN" tokenize --tokenizer "$tok" --decode < "$tmp/$kind.hf.ids"; } \
    > "$tmp/$kind.hf.txt"
  if ! cmp -s "$tmp/$kind.gale.txt" "$tmp/$kind.hf.txt"; then
    echo "FAIL $kind: gale sample and transformers' greedy generate() differ"
    echo "gale:         $(cat "$tmp/$kind.gale.txt")"
    echo "transformers: $(cat "$tmp/$kind.hf.txt")"
    exit 1
  fi
  grep -Eq "^\[12 prompt tokens, [0-9]+ generated.*tokens/s\]$" "$tmp/$kind.err" || { cat "$tmp/$kind.err"; exit 1; }
  echo "ok   $kind: $(wc -w < "$tmp/$kind.hf.ids") greedy tokens as transformers generates them; $(cat "$tmp/$kind.err")"
done
echo "sample_hf: greedy generation equals transformers'"
