#!/usr/bin/env bash
# gale's chat templates with Tekken tokenizers against mistral-common's encode_instruct: the v3
# format with tekken_240718.json (Mistral NeMo) and the v7 format (system prompts in place,
# answers with text and tool calls, [TOOL_CONTENT] results) with tekken_240911.json made v7, on
# random conversations with system prompts, tools and parallel tool calls, valid and mutated
# (tests/bench/check_chat_mistral_common.py; the expected ids are made by mistral-common here).
# Skipped (77) when mistral-common is not installed.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}" "${GALE_SOURCE:?}"
exec /usr/bin/python3 "$GALE_SOURCE/tests/bench/check_chat_mistral_common.py" --gale "$GALE_BIN" \
    --shared "$GALE_SHARED" --templates v3-tekken,v7-tekken --count 50 --seed 7
