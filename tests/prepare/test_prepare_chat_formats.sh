#!/usr/bin/env bash
# test_prepare_chat_formats: `gale prepare --kind sft` on one file mixing the chat formats
# (OpenAI messages, ShareGPT, content parts with the developer role, OpenAI call ids): the
# readable ones are kept; each rejected record is reported with file:line, its reason and the
# key at fault, and counted in report.json and --removed (untrained apart); --chat-key reads another key;
# a run rejecting more than max_rejected_share of its records as malformed, or every record,
# exits 1 and leaves no output. The ids themselves are test_chat_formats' and
# test_chat_formats_mistral_common's to check.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}"
work=$(mktemp -d /tmp/gale-test-prepare-chat-XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*"; exit 1; }
tok="$GALE_SHARED/tokenizers/mistral-v3.model"

cat > mixed.jsonl <<'EOF'
{"messages": [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}]}
{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Name a colour of the sky."}, {"from": "gpt", "value": "Blue."}]}
{"messages": [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": [{"type": "text", "text": "Say hello"}, {"type": "text", "text": "politely."}]}, {"role": "assistant", "content": [{"type": "text", "text": "Bonjour."}]}]}
{"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}], "messages": [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "call_Zx81LmQpT0aBcDeFgHiJkLmN", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]}, {"role": "tool", "tool_call_id": "call_Zx81LmQpT0aBcDeFgHiJkLmN", "content": "3"}, {"role": "assistant", "content": "3 degrees."}]}
{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": 4}]}
{"messages": [{"role": "user", "content": "Only context here"}, {"role": "assistant", "content": "not trained", "weight": 0}]}
{"messages": [{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x.png"}}]}, {"role": "assistant", "content": "A cat."}]}
{"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Bye now"}]}
EOF

"$GALE_BIN" prepare --input mixed.jsonl --tokenizer "$tok" --kind sft --chat-template v3 --out mixed \
  --seq-len 256 --val-fraction 0 --progress off --removed removed.jsonl 2> run.log ||
  { cat run.log; fail "the mixed run failed"; }
expect_line() { grep -qF -- "$1" run.log || { cat run.log; fail "no line '$1'"; }; }
expect_line "mixed.jsonl:5: invalid_conversation: messages[3].content: expected a string or text parts, got a number"
expect_line "mixed.jsonl:6: untrained: no assistant message is trained"
expect_line "mixed.jsonl:7: invalid_conversation: messages[0].content[1]: a \"image_url\" part: only text parts can be trained"
expect_line "mixed.jsonl:8: invalid_conversation: conversations[2]: training data must end with an assistant message"
python3 - <<'EOF'
import json, sys
d = json.load(open("mixed/report.json"))["documents"]
want = {"read": 8, "kept": 4, "rejected_total": 4}
if any(d[k] != v for k, v in want.items()) or d["rejected"]["invalid_conversation"] != 3 or d["rejected"]["untrained"] != 1:
    sys.exit(f"FAIL: counts {d}")
removed = {json.loads(line)["line"]: json.loads(line)["reason"] for line in open("removed.jsonl")}
if removed != {5: "malformed", 6: "untrained", 7: "malformed", 8: "malformed"}:
    sys.exit(f"FAIL: removed lines {removed}")
EOF

# --chat-key: the messages under another key
sed 's/"messages"/"dialog"/' mixed.jsonl | head -1 > dialog.jsonl
"$GALE_BIN" prepare --input dialog.jsonl --tokenizer "$tok" --kind sft --chat-key dialog --out dialog \
  --progress off 2> dialog.log || { cat dialog.log; fail "--chat-key dialog"; }
grep -q "1 kept" dialog.log || { cat dialog.log; fail "--chat-key: the record was not kept"; }

# too many malformed records, or all rejected: exit 1, no output
expect_error() {
  local want="$1"; shift
  if "$GALE_BIN" prepare "$@" --tokenizer "$tok" --kind sft --progress off > out.txt 2> err.txt; then
    fail "succeeded: $*"
  fi
  grep -qF -- "$want" err.txt || { cat err.txt; fail "expected '$want' for: $*"; }
}
expect_error "4 of 8 records (50.0%) were rejected as malformed or untrained, more than max_rejected_share (0.4)" \
  --input mixed.jsonl --out strict --max-rejected-share 0.4
[ ! -e strict ] && [ ! -e strict.partial ] || fail "a refused run left its output"
expect_error "every record was rejected (1 malformed or untrained, 0 outside the length bounds)" --input dialog.jsonl --out none
grep -qF 'dialog.jsonl:1: missing_key: no "messages", "conversations" or "conversation" key (give --chat-key for another)' err.txt ||
  { cat err.txt; fail "the missing key is not explained"; }
[ ! -e none ] || fail "a refused run left its output"
echo "test_prepare_chat_formats: ok"
