/* chat_formats: conversations as people have them, turned into the one form chat_encode
 * reads (data/chat.h), so that every format is rendered by the same verified templates.
 *
 * A record's messages are the array under chat_key when one is given, else under the first
 * of "messages", "conversations" and "conversation" that the record has. Each message is read on its own, by its keys:
 *   OpenAI, mistral-finetune  {"role", "content"}: role system, developer (a system
 *                             message), user, assistant or tool; tool_calls, tool_call_id,
 *                             name and weight as chat.h describes.
 *   ShareGPT                  {"from", "value"}: from human or user, gpt or assistant,
 *                             system, function_call (an assistant's tool calls: JSON
 *                             {"name", "arguments"} or a list of them), observation or tool
 *                             (a tool result, answering the earliest unanswered call).
 *                             A record's top-level "system" string is a first system message.
 * Content is a string, null, or OpenAI content parts [{"type": "text", "text": ...}], whose
 * texts join with "\n\n" and empty ones are skipped, as mistral-common joins text chunks;
 * a part of another type (an image, audio) is refused, naming it.
 * Tool-call ids: the v3 template renders 9 letters or digits. An id of that form is kept;
 * any other (OpenAI's "call_..." of any length) becomes 9 base-62 digits of its XXH3 hash,
 * the same in the call and in the result that names it, so a conversation's pairs stay
 * matched and the same input always gives the same ids. ShareGPT calls have no ids: each gets
 * the hash of its position. "tools" may also be a JSON string, and a tool a bare function
 * {"name", "description", "parameters"} (as ShareGPT datasets write them).
 *
 * Errors name the record's own key and index ("conversations[3].value: expected a string or
 * text parts, got a number"). */
#ifndef GALE_DATA_CHAT_FORMATS_H
#define GALE_DATA_CHAT_FORMATS_H

#include <jansson.h>
#include <stdbool.h>

#include "data/chat.h"
#include "util/vec.h"

/* chat_conversation_from_record's failure when the record has none of the keys searched. */
#define CHAT_NO_MESSAGES (-2)

/* The conversation of record in chat_encode's form (a new reference in *out), or -1 with a
 * message naming the key at fault (CHAT_NO_MESSAGES when there is no messages key at all).
 * chat_key NULL or "": found by the names above. The result also remembers where its
 * messages came from, for chat_conversation_encode's messages. */
int chat_conversation_from_record(const json_t *record, const char *chat_key, json_t **out,
                                  gale_error *err);

/* chat_encode_with_encoder on a conversation made by chat_conversation_from_record, whose
 * errors name the record's keys ("conversations[2]: ...") instead of "messages". */
int chat_conversation_encode(const gale_tokenizer *tok, tokenizer_encoder *enc,
                             enum chat_template tmpl, enum chat_purpose purpose,
                             const json_t *conversation, gale_ids *ids, gale_bytes *loss_mask,
                             gale_error *err);

/* False when no assistant message of the conversation is trained: all have "weight": 0, or
 * "only_last" is set and the last one has. Such a conversation has nothing to learn. */
bool chat_conversation_trains(const json_t *conversation);

/* The text that filters and dedup read: the system messages' contents first, one per line,
 * then the other messages' contents and tool calls (name and arguments, not the ids, which
 * differ between copies), one message per line. *near_from is where the part after the
 * system messages starts: near-duplicate detection reads only that part, so conversations
 * that share a long system prompt are told apart by what differs. text is replaced. */
void chat_conversation_text(const json_t *conversation, gale_bytes *text, size_t *near_from);

#endif
