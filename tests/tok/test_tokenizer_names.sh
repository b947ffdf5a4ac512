#!/usr/bin/env bash
# Tokenizers named by version (mistral-v1, mistral-v3), as a fresh clone's configs name them:
# mistral-common's files (installed by launch/setup.sh) are byte for byte the tokenizers of
# ../shared; gale finds them by name with no GALE_TOKENIZERS and encodes as with the file's
# path; a folder in GALE_TOKENIZERS comes first; prepare records the name and train finds it
# again; an unknown name or missing file is an error that names it.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}"
data=$(/usr/bin/python3 -c "import importlib.util as u, os; s = u.find_spec('mistral_common'); print(os.path.join(s.submodule_search_locations[0], 'data') if s else '')")
if [ -z "$data" ]; then
  echo "SKIP: the mistral-common Python package is not installed (launch/setup.sh installs it)"
  exit 77  # ctest: Skipped
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
unset GALE_TOKENIZERS

cmp "$data/tokenizer.model.v1" "$GALE_SHARED/tokenizers/mistral-v1.model"
cmp "$data/mistral_instruct_tokenizer_240323.model.v3" "$GALE_SHARED/tokenizers/mistral-v3.model"

printf 'Hello, world!\n  two  spaces\nÜnïcödé and 日本語\n[INST] not a control\n' > "$tmp/text"
for v in v1 v3; do
  "$GALE_BIN" tokenize --tokenizer "mistral-$v" --input "$tmp/text" > "$tmp/by-name"
  "$GALE_BIN" tokenize --tokenizer "$GALE_SHARED/tokenizers/mistral-$v.model" --input "$tmp/text" > "$tmp/by-path"
  cmp "$tmp/by-name" "$tmp/by-path"
done
# v1 and v3 encode this text differently, so the folder's file is the one that was used
mkdir "$tmp/toks"
cp "$GALE_SHARED/tokenizers/mistral-v3.model" "$tmp/toks/mistral-v1.model"
GALE_TOKENIZERS="/nonexistent:$tmp/toks" "$GALE_BIN" tokenize --tokenizer mistral-v1 --input "$tmp/text" > "$tmp/override"
cmp "$tmp/override" "$tmp/by-path"

# prepare records the name; inspect decodes with it; train copies the file into the checkpoint
printf '{"text": "%s"}\n' "one fortune of some length" "another fortune, longer than the first" > "$tmp/docs.jsonl"
"$GALE_BIN" prepare --input "$tmp/docs.jsonl" --tokenizer mistral-v1 --out "$tmp/data" --seq_len 16 \
  --val_fraction 0 --dedup none 2> /dev/null
grep -q '"path": "mistral-v1"' "$tmp/data/manifest.json"
"$GALE_BIN" inspect "$tmp/data" --decode 0 | grep -q "one fortune of some length"
cat > "$tmp/run.yaml" <<YAML
model: {model_type: mistral, vocab_size: 32000, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1,
        num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 32}
data: {sources: [{path: $tmp/data}], seq_len: 16, micro_batch: 1}
run: {steps: 1, eval_every: 0, checkpoint_every: 1, dir: $tmp/run}
YAML
"$GALE_BIN" train "$tmp/run.yaml" > /dev/null
cmp "$tmp/run/checkpoints/step_00000001/tokenizer.model" "$GALE_SHARED/tokenizers/mistral-v1.model"
"$GALE_BIN" sample --checkpoint "$tmp/run" --tokenizer mistral-v1 --prompt "one" --max-new 2 --temperature 0 \
  2> /dev/null | grep -q "^one"

# Tekken files by name, as mistral-common ships them
for v in 240718 240911; do
  "$GALE_BIN" tokenize --tokenizer "tekken-$v" < "$tmp/text" > "$tmp/by_name"
  "$GALE_BIN" tokenize --tokenizer "$data/tekken_$v.json" < "$tmp/text" > "$tmp/by_path"
  cmp "$tmp/by_name" "$tmp/by_path"
done

# errors name what was asked for
if "$GALE_BIN" tokenize --tokenizer mistral-v9 < "$tmp/text" 2> "$tmp/err"; then echo "FAIL: accepted mistral-v9"; exit 1; fi
grep -q "mistral-v9" "$tmp/err" && grep -q "mistral-v1, mistral-v3" "$tmp/err" || { cat "$tmp/err"; exit 1; }
# a folder given as the tokenizer: the file and the reason
if "$GALE_BIN" tokenize --tokenizer "$tmp" < "$tmp/text" 2> "$tmp/err"; then echo "FAIL: accepted a folder"; exit 1; fi
grep -q "$tmp: read error: Is a directory" "$tmp/err" || { cat "$tmp/err"; echo "FAIL: no reason for a folder"; exit 1; }
echo "tokenizer names: mistral-common's files are ../shared's; by name = by path; GALE_TOKENIZERS first; prepare -> train"
