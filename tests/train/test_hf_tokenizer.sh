#!/usr/bin/env bash
# test_hf_tokenizer: a checkpoint's tokenizer files work in transformers as the hub's own do.
# For each chat template (v1 and llama2 with the Mistral v1 tokenizer, v3 with v3), SFT data
# is prepared and trained on for a step; transformers' AutoTokenizer (slow and fast) loads the
# checkpoint and must give gale's ids for plain text (BOS added) and, through
# apply_chat_template, gale's chat ids for conversations ending with an answer (training) and
# with a user turn (prompt). A run from that checkpoint (model.from) carries its tokenizer
# files over. Needs transformers, sentencepiece and protobuf for /usr/bin/python3
# (tests/bench/setup_bench.sh).
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}"
py=/usr/bin/python3
if ! $py -c "import transformers, sentencepiece, google.protobuf" 2>/dev/null; then
  echo "SKIP: /usr/bin/python3 lacks transformers, sentencepiece or protobuf (tests/bench/setup_bench.sh)"
  exit 77  # ctest: Skipped
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# conversations every template renders: an optional system message, then user and assistant
# alternating, with newlines, non-ASCII text, inner and trailing spaces
cat > "$tmp/chats.jsonl" <<'JSONL'
{"messages": [{"role": "user", "content": "Hello, who are you?"}, {"role": "assistant", "content": "I am a small model."}]}
{"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6, of course."}]}
{"messages": [{"role": "user", "content": "Line one\nline two"}, {"role": "assistant", "content": "Yes  it is. "}, {"role": "user", "content": "Ünïcödé und 日本語"}, {"role": "assistant", "content": "ok"}]}
{"messages": [{"role": "system", "content": "You are terse.\nVery terse."}, {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue"}]}
JSONL
printf '%s\n' "Hello world" "  two leading spaces" "Ünïcödé und 日本語" "<b>tags</b> & 1.5e-3, tabs\there" > "$tmp/texts"

tiny_run() {  # RUN_YAML DATA RUN_DIR [FROM]
  cat > "$1" <<YAML
model: {model_type: mistral, vocab_size: 32768, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1,
        num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 64}
data: {sources: [{path: $2}], seq_len: 64, micro_batch: 1}
run: {steps: 1, eval_every: 0, checkpoint_every: 1, dir: $3}
YAML
  if [ -n "${4:-}" ]; then sed -i "s|^model: {|model: {from: $4, |" "$1"; fi
  "$GALE_BIN" train "$1" > /dev/null
}

for case in "v1 mistral-v1" "v3 mistral-v3" "llama2 mistral-v1"; do
  set -- $case
  tmpl=$1 model="$GALE_SHARED/tokenizers/$2.model"
  "$GALE_BIN" prepare --input "$tmp/chats.jsonl" --tokenizer "$model" --kind sft --chat_template "$tmpl" \
    --out "$tmp/$tmpl-data" --seq_len 64 --val_fraction 0 --dedup none 2> /dev/null
  tiny_run "$tmp/$tmpl.yaml" "$tmp/$tmpl-data" "$tmp/$tmpl-run"
  ckpt="$tmp/$tmpl-run/checkpoints/step_00000001"
  "$GALE_BIN" tokenize --tokenizer "$model" < "$tmp/texts" > "$tmp/$tmpl.text-ids"
  "$GALE_BIN" tokenize --tokenizer "$model" --chat "$tmpl" < "$tmp/chats.jsonl" > "$tmp/$tmpl.train-ids"
  $py -c 'import json, sys
for l in open(sys.argv[1]):
    print(json.dumps({"messages": json.loads(l)["messages"][:-1]}))' "$tmp/chats.jsonl" > "$tmp/prompts.jsonl"
  "$GALE_BIN" tokenize --tokenizer "$model" --chat "$tmpl" --prompt < "$tmp/prompts.jsonl" > "$tmp/$tmpl.prompt-ids"
  $py - "$ckpt" "$tmp" "$tmpl" <<'PY'
import json, sys
from transformers import AutoTokenizer
ckpt, tmp, tmpl = sys.argv[1:]
ids = lambda name: [[int(x) for x in l.split()] for l in open(f"{tmp}/{tmpl}.{name}-ids")]
texts = open(f"{tmp}/texts").read().splitlines()
chats = [json.loads(l)["messages"] for l in open(f"{tmp}/chats.jsonl")]
gen = json.load(open(f"{ckpt}/generation_config.json"))
assert gen["bos_token_id"] == 1 and gen["eos_token_id"] == 2, gen
checks = 0
for fast in (False, True):
    tok = AutoTokenizer.from_pretrained(ckpt, use_fast=fast)
    kind = type(tok).__name__
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.unk_token == "<unk>", kind
    for text, want in zip(texts, ids("text")):
        got = tok(text).input_ids
        assert got == [1] + want, f"{kind} {text!r}: {got} != BOS + {want}"
        checks += 1
    for form, convs in (("train", chats), ("prompt", [c[:-1] for c in chats])):
        for conv, want in zip(convs, ids(form)):
            got = tok.apply_chat_template(conv, tokenize=True)
            assert got == want, f"{kind} {tmpl} {form} {conv}:\n  hf   {got}\n  gale {want}\n  text {tok.apply_chat_template(conv, tokenize=False)!r}"
            checks += 1
print(f"{tmpl}: {checks} encodings equal to gale's (slow and fast tokenizers)")
PY
done

# model.from: the folder's tokenizer files are carried over (a marker shows whose they are)
from="$tmp/v1-run/checkpoints/step_00000001"
$py -c 'import json, sys
p = sys.argv[1] + "/tokenizer_config.json"; c = json.load(open(p)); c["model_max_length"] = 4242; json.dump(c, open(p, "w"))' "$from"
tiny_run "$tmp/from.yaml" "$tmp/v1-data" "$tmp/from-run" "$from"
grep -q '"model_max_length": 4242' "$tmp/from-run/checkpoints/step_00000001/tokenizer_config.json" ||
  { echo "FAIL: model.from's tokenizer_config.json was not carried over"; exit 1; }
echo "hf_tokenizer: AutoTokenizer and apply_chat_template on checkpoints agree with gale; model.from's files carried over"
