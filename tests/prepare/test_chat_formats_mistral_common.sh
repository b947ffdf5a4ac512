#!/usr/bin/env bash
# test_chat_formats_mistral_common: ShareGPT records and OpenAI records with content parts,
# encoded by gale (the chat_formats reader that gale prepare and gale tokenize share) under
# the v1 and v3 templates, give mistral-common's ids for the same conversation: ShareGPT's
# speakers turned into mistral-common messages here, the OpenAI records read by
# mistral-common's own ChatCompletionRequest.from_openai (so how text parts join is its
# rule, not ours). Random conversations, seeded. Skipped (exit 77) without mistral-common
# and sentencepiece in /usr/bin/python3.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}"
py=/usr/bin/python3
if ! "$py" -c "from mistral_common.tokens.tokenizers.mistral import MistralTokenizer; import sentencepiece" 2>/dev/null; then
  echo "SKIP: $py lacks mistral-common (with sentencepiece)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$py" - "$GALE_BIN" "$GALE_SHARED/tokenizers" "$tmp" <<'EOF'
import json, os, random, shutil, subprocess, sys
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.validator import ValidationMode
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

gale, tokenizers, tmp = sys.argv[1:]
rng = random.Random(7)
TEXTS = ["Hello", "What's the weather like in Paris?", "  padded  ", "multi\nline\n\ntext", "ünïcödé 日本語 😀",
         "Sure! 5 + 5 = 10.", "", "[INST] not a control", "tab\there", "x" * 30]


def text(allow_empty=False):
    t = "".join(rng.choice(TEXTS) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(1, 3)))
    return t if t.strip() or allow_empty else "answer"


def turns():
    """(role, text) pairs: an optional system, then user/assistant turns ending with an answer."""
    out = [("system", text())] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        out += [("user", text()), ("assistant", text())]
    return out


def sharegpt(pairs):
    speaker = {"system": "system", "user": rng.choice(["human", "user"]), "assistant": rng.choice(["gpt", "assistant"])}
    record = {"conversations": [{"from": speaker[r], "value": t} for r, t in pairs]}
    if pairs[0][0] == "system" and rng.random() < 0.5:
        record = {"system": pairs[0][1], "conversations": record["conversations"][1:]}
    messages = [{"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}[r](content=t)
                for r, t in pairs]
    return record, ChatCompletionRequest(messages=messages)


def openai_parts(pairs):
    def parts(t):
        pieces = t.split("\n\n") if rng.random() < 0.5 else [t]
        out = [{"type": "text", "text": p} for p in pieces]
        if rng.random() < 0.3:
            out.insert(rng.randrange(len(out) + 1), {"type": "text", "text": ""})
        return out
    messages = [{"role": r, "content": parts(t) if r != "system" or rng.random() < 0.5 else t} for r, t in pairs]
    record = {"messages": messages}
    if pairs[0][0] == "system" and rng.random() < 0.5:
        record = {"messages": [dict(messages[0], role="developer")] + messages[1:]}
    return record, ChatCompletionRequest.from_openai(messages=messages)


failures = checked = 0
for template in ["v1", "v3"]:
    named = os.path.join(tmp, f"tokenizer.model.{template}")  # mistral-common reads the version from the name
    shutil.copy(os.path.join(tokenizers, f"mistral-{template}.model"), named)
    tokenizer = MistralTokenizer.from_file(named, mode=ValidationMode.finetuning)
    records, expected = [], []
    for i in range(120):
        record, request = (sharegpt if i % 2 else openai_parts)(turns())
        records.append(json.dumps(record, ensure_ascii=False) + "\n")
        expected.append(tokenizer.encode_chat_completion(request).tokens)
    out = subprocess.run([gale, "tokenize", "--tokenizer", os.path.join(tokenizers, f"mistral-{template}.model"),
                          "--chat", template], input="".join(records), capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"FAIL {template}: gale tokenize refused: {out.stderr.strip()}")
    for line, want, got in zip(records, expected, out.stdout.splitlines()):
        checked += 1
        ids = [int(x) for x in got.split()]
        if ids != want:
            failures += 1
            print(f"FAIL {template}: {line.strip()}\n  gale {ids}\n  mc   {want}")
print(f"{checked} ShareGPT and OpenAI-parts conversations checked against mistral-common, {failures} differ")
sys.exit(1 if failures or checked != 240 else 0)
EOF
