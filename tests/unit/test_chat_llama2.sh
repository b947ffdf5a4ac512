#!/bin/bash
# test_chat_llama2: `gale tokenize --chat llama2` against Meta's reference chat_completion
# formula, computed here with Python's sentencepiece on mistral-v1.model (the same tokenizer
# family as Llama 2's): each (user, answer) pair is bos + encode("[INST] {user.strip()}
# [/INST] {answer.strip()} ") + eos, the system prompt inside the first user turn, and a
# prompt ends with bos + encode("[INST] {user.strip()} [/INST]"). The loss mask is checked
# on its own terms: per pair 0s then 1s, the 1s decoding to the stripped answer and ending in
# eos, the 0s to the prompt, a "weight": 0 answer all 0. Also the CLI's refusals.
set -euo pipefail
py=/usr/bin/python3
if ! "$py" -c "import sentencepiece" 2>/dev/null; then
    echo "SKIP: $py has no sentencepiece module"
    exit 77
fi
model="$GALE_SHARED/tokenizers/mistral-v1.model"
data="$GALE_SOURCE/tests/data/chat/llama2.jsonl"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# prompts: the same conversations without their final answer
"$py" -c '
import json, sys
for line in open(sys.argv[1]):
    c = json.loads(line)
    c["messages"] = c["messages"][:-1]
    print(json.dumps(c, ensure_ascii=False))
' "$data" > "$tmp/prompts.jsonl"

"$GALE_BIN" tokenize --tokenizer "$model" --chat llama2 --mask --input "$data" > "$tmp/train.txt"
"$GALE_BIN" tokenize --tokenizer "$model" --chat llama2 --prompt < "$tmp/prompts.jsonl" > "$tmp/prompt.txt"

"$py" - "$model" "$data" "$tmp/prompts.jsonl" "$tmp/train.txt" "$tmp/prompt.txt" <<'EOF'
import json, sys
import sentencepiece as spm

model, data, prompts, train_out, prompt_out = sys.argv[1:]
sp = spm.SentencePieceProcessor(model_file=model)
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

def reference(dialog, training):
    # Meta's llama/generation.py chat_completion, with the final answer kept for training
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"],
                   "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    ids = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        ids += [sp.bos_id()] + sp.encode(
            f"{B_INST} {(prompt['content']).strip()} {E_INST} {(answer['content']).strip()} ") + [sp.eos_id()]
    if not training:
        ids += [sp.bos_id()] + sp.encode(f"{B_INST} {(dialog[-1]['content']).strip()} {E_INST}")
    return ids, dialog

failures = 0
def fail(msg):
    global failures
    failures += 1
    print("FAIL", msg)

train_lines = open(train_out).read().splitlines()
for n, line in enumerate(open(data)):
    messages = json.loads(line)["messages"]
    want, dialog = reference(messages, True)
    ids_text, mask_text = train_lines[n].split("\t")
    ids, mask = [int(x) for x in ids_text.split()], [int(x) for x in mask_text.split()]
    if ids != want:
        fail(f"conversation {n + 1}: ids\n  got  {ids}\n  want {want}")
        continue
    if len(mask) != len(ids):
        fail(f"conversation {n + 1}: {len(mask)} mask values for {len(ids)} ids")
        continue
    starts = [i for i, t in enumerate(ids) if t == sp.bos_id()] + [len(ids)]
    for k, (user, answer) in enumerate(zip(dialog[::2], dialog[1::2])):
        seg, m = ids[starts[k]:starts[k + 1]], mask[starts[k]:starts[k + 1]]
        trained = answer.get("weight", 1) != 0
        first = m.index(1) if 1 in m else len(m)
        if not trained:
            if any(m):
                fail(f"conversation {n + 1} pair {k + 1}: weight 0 answer is in the mask")
            continue
        if any(m[:first]) or not all(m[first:]) or seg[-1] != sp.eos_id():
            fail(f"conversation {n + 1} pair {k + 1}: mask {m} is not 0s then 1s ending on eos")
            continue
        got_answer = sp.decode(seg[first:-1]).strip()
        got_prompt = sp.decode(seg[1:first])
        if got_answer != answer["content"].strip():
            fail(f"conversation {n + 1} pair {k + 1}: masked text {got_answer!r}, want {answer['content'].strip()!r}")
        if got_prompt != f"{B_INST} {user['content'].strip()} {E_INST}":
            fail(f"conversation {n + 1} pair {k + 1}: unmasked text {got_prompt!r}")

prompt_lines = open(prompt_out).read().splitlines()
for n, line in enumerate(open(prompts)):
    want, _ = reference(json.loads(line)["messages"], False)
    got = [int(x) for x in prompt_lines[n].split()]
    if got != want:
        fail(f"prompt {n + 1}: ids\n  got  {got}\n  want {want}")

print(f"{len(train_lines)} conversations, {len(prompt_lines)} prompts, {failures} failures")
sys.exit(1 if failures else 0)
EOF

# refusals name the line and the message
expect_refusal() {
    local want="$1"
    shift
    if "$GALE_BIN" "$@" > "$tmp/out" 2> "$tmp/err"; then
        echo "FAIL gale $* succeeded"
        exit 1
    fi
    if ! grep -qF -- "$want" "$tmp/err"; then
        echo "FAIL gale $*: message '$(cat "$tmp/err")' lacks '$want'"
        exit 1
    fi
}
printf '%s\n' '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}' \
    '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 3}]}' > "$tmp/bad_content.jsonl"
expect_refusal "bad_content.jsonl:2: messages[1].content: expected a string or text parts, got a number" \
    tokenize --tokenizer "$model" --chat llama2 --input "$tmp/bad_content.jsonl"
printf '%s\n' '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}' '' \
    '{"messages": [' > "$tmp/bad_json.jsonl"
expect_refusal "bad_json.jsonl:3: not valid JSON" tokenize --tokenizer "$model" --chat v1 --input "$tmp/bad_json.jsonl"
expect_refusal "<stdin>:1: messages[0]: training data must end with an assistant message" \
    tokenize --tokenizer "$model" --chat llama2 < "$tmp/prompts.jsonl"
expect_refusal "unknown chat template 'v2'" tokenize --tokenizer "$model" --chat v2
expect_refusal "--prompt and --mask go with --chat" tokenize --tokenizer "$model" --mask
echo "refusals: ok"
