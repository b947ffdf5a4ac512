/* chat: conversations (OpenAI / mistral-finetune JSON) to token ids and a loss mask, with the
 * templates the models were trained with:
 *   v1      Mistral Instruct v0.1/v0.2 (mistral-common InstructTokenizerV1): the text
 *           "[INST] {user} [/INST]" through SentencePiece, the system prompt in front of the
 *           first user message; no tools.
 *   v3      Mistral Instruct v0.3 / Mixtral 8x22B Instruct (InstructTokenizerV3): control
 *           tokens [INST] [/INST] [AVAILABLE_TOOLS] [TOOL_CALLS] [TOOL_RESULTS]..., the system
 *           prompt and the tool list in front of the last user message, tool calls and
 *           results as Python-serialised JSON with their 9-character call ids.
 *   v7      Mistral Small 3 and later (InstructTokenizerV7, with a Tekken or v7 SentencePiece
 *           tokenizer): as v3, but each system message stays where it is as
 *           [SYSTEM_PROMPT] {text} [/SYSTEM_PROMPT], an answer may hold text then tool calls,
 *           and a tool result is [TOOL_RESULTS] {call id} [TOOL_CONTENT] {content}
 *           [/TOOL_RESULTS] with the content as it is.
 *   llama2  Llama 2-Chat (Meta's chat_completion): each (user, answer) pair is
 *           <s> "[INST] {user} [/INST] {answer} " </s>, the system prompt inside the first
 *           user turn as "<<SYS>>\n{system}\n<</SYS>>\n\n"; no tools.
 *
 * The conversation is {"messages": [...], "tools": [...], "only_last": bool} (data/chat_formats.h
 * turns ShareGPT records, OpenAI content parts and call ids into it); a message is
 * {"role": "system"|"user"|"assistant"|"tool", "content": string, ...}: an assistant message
 * has "content" or "tool_calls" ([{"id", "function": {"name", "arguments"}}], arguments a
 * JSON string or object), a tool message has "tool_call_id", "weight": 0 or 1 marks whether
 * an assistant message is trained. The Mistral templates merge messages as mistral-common's
 * normaliser does: every system message joins the system prompt ("\n\n" between them),
 * consecutive messages of one role (and weight) join into one, and a conversation not
 * opening with a user message gets an empty one. Validation follows mistral-common's
 * request validator (role order, call ids, as many tool results as calls), llama2 Meta's
 * (an optional system message, then user and assistant alternating).
 *
 * Purposes: CHAT_FOR_TRAINING (mistral-finetune's rule: the last message is the assistant's,
 * every assistant turn ends with </s>) and CHAT_FOR_PROMPT (the last message is not the
 * assistant's, as for generation; the chat vectors of mistral-common are of this kind).
 * The rules are mistral-common 1.13's, checked against it on random conversations by
 * tests/bench/check_chat_mistral_common.py.
 *
 * The loss mask is 1 on the ids of assistant answers (text, or [TOOL_CALLS] and the call
 * JSON) and their </s>, 0 elsewhere; an assistant message with "weight": 0 is all 0, and
 * with "only_last": true only the conversation's final assistant message is trained.
 * Unlike mistral-finetune, the presence of tools does not by itself imply only_last, and
 * the call id of the final message is kept (it is what v3 renders). */
#ifndef GALE_DATA_CHAT_H
#define GALE_DATA_CHAT_H

#include <jansson.h>

#include "data/tokenizer.h"
#include "util/error.h"
#include "util/vec.h"

enum chat_template { CHAT_MISTRAL_V1, CHAT_MISTRAL_V3, CHAT_LLAMA2, CHAT_MISTRAL_V7 };

enum chat_purpose { CHAT_FOR_TRAINING, CHAT_FOR_PROMPT };

/* "v1", "v3", "llama2" or "v7"; -1 and a message listing them otherwise. */
int chat_template_from_name(const char *name, enum chat_template *out, gale_error *err);
const char *chat_template_name(enum chat_template tmpl);

/* The template as a Jinja string for transformers' apply_chat_template (tokenizer_config.json's
 * "chat_template"): the same ids as chat_encode for conversations without tools. NULL for v7,
 * which has no Jinja form here yet. */
const char *chat_template_jinja(enum chat_template tmpl);

/* Appends the ids of one conversation (BOS first) to ids and, when loss_mask is not NULL,
 * one mask byte per id to loss_mask. On error returns -1 with a message naming the message
 * index and key at fault ("messages[3].tool_calls[0].function.name: ..."), and leaves ids
 * and loss_mask as they were. */
int chat_encode(const gale_tokenizer *tok, enum chat_template tmpl, enum chat_purpose purpose,
                const json_t *conversation, gale_ids *ids, gale_bytes *loss_mask,
                gale_error *err);

/* chat_encode through enc, an encoder of tok (tokenizer_encoder_new) that one thread uses at
 * a time: the same ids, faster over many conversations (its cache keeps frequent words). */
int chat_encode_with_encoder(const gale_tokenizer *tok, tokenizer_encoder *enc,
                             enum chat_template tmpl, enum chat_purpose purpose,
                             const json_t *conversation, gale_ids *ids, gale_bytes *loss_mask,
                             gale_error *err);

#endif
