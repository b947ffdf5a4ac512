/* chat_llama2: the Llama 2-Chat template of Meta's reference chat_completion. Each (user,
 * answer) pair is encoded as the one string "[INST] {user} [/INST] {answer} " between <s>
 * and </s>, both sides stripped as Python's str.strip() does; a final user message of a
 * prompt is "[INST] {user} [/INST]" after <s>. The answer's ids are those past the ids of
 * "[INST] {user} [/INST]": SentencePiece starts a new piece at every space, so the prompt's
 * ids are a prefix of the pair's (checked, not assumed). */
#include <stdbool.h>
#include <string.h>

#include "data/chat_internal.h"

/* Code points Python's str.isspace() accepts. */
static bool is_python_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Decodes the code point of the UTF-8 sequence at s[0..len); *size gets its length.
 * Malformed bytes decode as themselves (never white space). */
static uint32_t utf8_at(const uint8_t *s, size_t len, size_t *size)
{
    size_t n = s[0] < 0x80 ? 1 : s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 1;
    if (n > len)
        n = 1;
    *size = n;
    if (n == 1)
        return s[0] < 0x80 ? s[0] : 0xfffd;
    uint32_t c = s[0] & (0x7f >> n);
    for (size_t i = 1; i < n; i++)
        c = (c << 6) | (s[i] & 0x3f);
    return c;
}

/* Python's str.strip(): the span of text without leading and trailing white space. */
static void python_strip(const uint8_t *text, size_t len, size_t *begin, size_t *end)
{
    size_t b = 0, e = len, size;
    while (b < e && is_python_space(utf8_at(text + b, e - b, &size)))
        b += size;
    while (e > b) {
        size_t start = e - 1;
        while (start > b && (text[start] & 0xc0) == 0x80)
            start--;
        if (!is_python_space(utf8_at(text + start, e - start, &size)) || start + size != e)
            break;
        e = start;
    }
    *begin = b;
    *end = e;
}

static void append_stripped(gale_bytes *buf, const gale_bytes *text)
{
    size_t b, e;
    python_strip(text->v, text->n, &b, &e);
    gale_bytes_append(buf, text->v + b, e - b);
}

static void put(gale_bytes *buf, const char *s)
{
    gale_bytes_append(buf, s, strlen(s));
}

/* "[INST] {user} [/INST]", the system prompt wrapped in <<SYS>> inside the first turn and
 * the whole stripped, as Meta's reference does. */
static void build_prompt(const struct chat_conversation *conv, const struct chat_turn *user,
                         int first, gale_bytes *buf)
{
    gale_bytes content = {0};
    if (first && conv->has_system) {
        put(&content, "<<SYS>>\n");
        gale_bytes_append(&content, conv->system_prompt.v, conv->system_prompt.n);
        put(&content, "\n<</SYS>>\n\n");
    }
    gale_bytes_append(&content, user->text.v, user->text.n);
    buf->n = 0;
    put(buf, "[INST] ");
    append_stripped(buf, &content);
    put(buf, " [/INST]");
    gale_bytes_free(&content);
}

int chat_render_llama2(const struct chat_sink *s, const struct chat_conversation *conv,
                       gale_error *err)
{
    gale_bytes text = {0};
    gale_ids prompt_ids = {0}, pair_ids = {0};
    int rc = 0;
    for (size_t i = 0; i < conv->n_turns && !rc; i += 2) {
        const struct chat_turn *user = &conv->turns[i];
        const struct chat_turn *answer = i + 1 < conv->n_turns ? &conv->turns[i + 1] : NULL;
        build_prompt(conv, user, i == 0, &text);
        chat_emit_id(s, tokenizer_bos_id(s->tok), 0);
        if (!answer) {
            chat_emit_text(s, text.v, text.n, 0);
            break;
        }
        prompt_ids.n = pair_ids.n = 0;
        chat_encode_text(s, text.v, text.n, &prompt_ids);
        gale_bytes_push(&text, ' ');
        append_stripped(&text, &answer->text);
        gale_bytes_push(&text, ' ');
        chat_encode_text(s, text.v, text.n, &pair_ids);
        if (pair_ids.n < prompt_ids.n ||
            memcmp(pair_ids.v, prompt_ids.v, prompt_ids.n * sizeof *prompt_ids.v)) {
            rc = gale_fail(err,
                           "messages[%zu]: the tokenizer merges the end of \"[/INST]\" with the "
                           "answer, so the answer's ids cannot be told apart for the loss mask",
                           answer->message);
            break;
        }
        uint8_t m = answer->trained ? 1 : 0;
        gale_ids_append(s->ids, pair_ids.v, pair_ids.n);
        if (s->mask) {
            gale_bytes_fill(s->mask, 0, prompt_ids.n);
            gale_bytes_fill(s->mask, m, pair_ids.n - prompt_ids.n);
        }
        chat_emit_id(s, tokenizer_eos_id(s->tok), m);
    }
    gale_bytes_free(&text);
    gale_ids_free(&prompt_ids);
    gale_ids_free(&pair_ids);
    return rc;
}
