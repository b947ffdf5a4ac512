/* chat_jinja: the chat templates as Jinja, for a checkpoint's tokenizer_config.json, so that
 * transformers' apply_chat_template gives the ids chat_encode gives (v1, v3, llama2; see
 * chat.h). The Mistral ones normalise as mistral-common does (system messages joined into
 * one prompt, runs of one role merged with "\n\n", an empty user turn before an opening
 * assistant message); they render no tools, and say so, where gale's v3 does. They rely on
 * the tokenizer adding the SentencePiece dummy prefix to every piece of text between special
 * tokens, as transformers' LlamaTokenizer does for the Mistral models. */
#include "data/chat.h"

/* The mistral-common normaliser, into ns.system and ns.turns ([{role, content}]). */
#define MISTRAL_NORMALISE                                                                                     \
    "{%- set ns = namespace(system='', turns=[], prev='') -%}"                                               \
    "{%- for m in messages -%}"                                                                               \
    "{%- set text = m['content'] if m['content'] is string else '' -%}"                                      \
    "{%- if m['role'] == 'system' -%}"                                                                        \
    "{%- if text -%}{%- set ns.system = ns.system + ('\\n\\n' if ns.system else '') + text -%}{%- endif -%}" \
    "{%- elif m['role'] not in ['user', 'assistant'] or m['tool_calls'] is defined -%}"                      \
    "{{- raise_exception('this template renders system, user and assistant messages only, no tools') -}}"   \
    "{%- elif ns.turns and ns.prev == m['role'] -%}"                                                         \
    "{%- set last = ns.turns[-1] -%}"                                                                         \
    "{%- set ns.turns = ns.turns[:-1] + [{'role': m['role'], 'content': last['content'] + "                  \
    "('\\n\\n' if last['content'] and text else '') + text}] -%}"                                            \
    "{%- else -%}"                                                                                            \
    "{%- if not ns.turns and m['role'] == 'assistant' -%}"                                                    \
    "{%- set ns.turns = [{'role': 'user', 'content': ''}] -%}{%- endif -%}"                                  \
    "{%- set ns.turns = ns.turns + [{'role': m['role'], 'content': text}] -%}"                               \
    "{%- endif -%}"                                                                                           \
    "{%- set ns.prev = m['role'] -%}"                                                                         \
    "{%- endfor -%}"                                                                                          \
    "{%- set users = ns.turns | selectattr('role', 'equalto', 'user') | list -%}"

/* v1: "[INST] {system}\n\n{user} [/INST]" as text, the system prompt on the first user turn. */
static const char mistral_v1[] = MISTRAL_NORMALISE
    "{{- bos_token -}}"
    "{%- for t in ns.turns -%}"
    "{%- if t['role'] == 'user' -%}"
    "{{- '[INST] ' + (ns.system + '\\n\\n' if ns.system and t is sameas users[0] else '') + t['content'] + ' [/INST]' -}}"
    "{%- else -%}"
    "{{- ' ' + t['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}";

/* v3: the control tokens [INST] [/INST], the system prompt on the last user turn, answers
 * without trailing spaces. */
static const char mistral_v3[] = MISTRAL_NORMALISE
    "{{- bos_token -}}"
    "{%- for t in ns.turns -%}"
    "{%- if t['role'] == 'user' -%}"
    "{{- '[INST]' + (ns.system + '\\n\\n' if ns.system and t is sameas users[-1] else '') + t['content'] + '[/INST]' -}}"
    "{%- else -%}"
    "{{- t['content'].rstrip(' ') + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}";

/* llama2: Meta's chat_completion: <s>[INST] {<<SYS>> on the first turn}{user} [/INST] {answer} </s>,
 * both sides stripped. */
static const char llama2[] =
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for m in loop_messages -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('after an optional system message, roles must alternate user/assistant/user/...') -}}"
    "{%- endif -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- set content = ('<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' if loop.first and system is not none else '') "
    "+ m['content'] -%}"
    "{{- bos_token + '[INST] ' + content.strip() + ' [/INST]' -}}"
    "{%- else -%}"
    "{{- ' ' + m['content'].strip() + ' ' + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}";

const char *chat_template_jinja(enum chat_template tmpl)
{
    switch (tmpl) {
    case CHAT_MISTRAL_V1:
        return mistral_v1;
    case CHAT_MISTRAL_V3:
        return mistral_v3;
    case CHAT_LLAMA2:
        return llama2;
    case CHAT_MISTRAL_V7: /* no Jinja form written yet: the folder gets no chat_template */
        return NULL;
    }
    return NULL;
}
