/* hf_files: tokenizer and generation files for a Hub-ready checkpoint; see hf_files.h. */
#include "train/hf_files.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "data/chat.h"
#include "data/tokenizer.h"
#include "util/file.h"
#include "util/hash.h"

/* The files of a Hugging Face folder that describe its tokenizer: carried over from model.from. */
static const char *const carried[] = {"tokenizer.model",         "tekken.json",           "tokenizer_config.json",
                                      "special_tokens_map.json", "generation_config.json", "tokenizer.json"};

static int copy_file(const char *from, const char *to, gale_error *err)
{
    size_t len;
    char *data = gale_read_file(from, &len, err);
    if (!data)
        return -1;
    int rc = gale_write_file_atomic(to, data, len, err);
    free(data);
    return rc;
}

static int write_json(const char *dir, const char *name, json_t *j, gale_error *err)
{
    char *path = gale_path_join(dir, name);
    int rc = gale_write_json_atomic(path, j, JSON_INDENT(2) | JSON_PRESERVE_ORDER, err);
    free(path);
    json_decref(j);
    return rc;
}

/* A special token as transformers' added_tokens_decoder lists it. */
static json_t *added_token(const char *piece)
{
    return json_pack("{s:s, s:b, s:b, s:b, s:b, s:b}", "content", piece, "lstrip", 0, "normalized", 0, "rstrip", 0,
                     "single_word", 0, "special", 1);
}

static int write_tokenizer_config(const char *dir, const gale_tokenizer *tok, enum chat_template tmpl,
                                  gale_error *err)
{
    json_t *added = json_object();
    for (int id = 0; id < tokenizer_vocab_size(tok); id++)
        if (tokenizer_is_special(tok, id)) {
            char key[16];
            snprintf(key, sizeof key, "%d", id);
            json_object_set_new(added, key, added_token(tokenizer_id_piece(tok, id)));
        }
    const char *unk = tokenizer_id_piece(tok, tokenizer_unk_id(tok));
    json_t *cfg = json_pack("{s:b, s:b, s:o, s:s, s:s, s:s, s:n, s:s, s:b, s:b, s:b}", "add_bos_token", 1,
                            "add_eos_token", 0, "added_tokens_decoder", added, "bos_token",
                            tokenizer_id_piece(tok, tokenizer_bos_id(tok)), "eos_token",
                            tokenizer_id_piece(tok, tokenizer_eos_id(tok)), "unk_token", unk ? unk : "<unk>",
                            "pad_token", "tokenizer_class", "LlamaTokenizer", "legacy", 1,
                            "clean_up_tokenization_spaces", 0, "spaces_between_special_tokens", 0);
    const char *jinja = chat_template_jinja(tmpl);
    if (jinja)
        json_object_set_new(cfg, "chat_template", json_string(jinja));
    return write_json(dir, "tokenizer_config.json", cfg, err);
}

static int write_ours(const char *dir, const gale_hf_files *hf, gale_error *err)
{
    gale_tokenizer *tok = tokenizer_load(hf->tokenizer_path, err);
    if (!tok)
        return -1;
    enum chat_template tmpl = tokenizer_is_special(tok, tokenizer_piece_id(tok, "[INST]")) ? CHAT_MISTRAL_V3
                                                                                            : CHAT_MISTRAL_V1;
    const char *unk = tokenizer_id_piece(tok, tokenizer_unk_id(tok));
    char *model = gale_path_join(dir, tokenizer_file_name(tok));
    /* A Tekken file is kept as tekken.json, as Mistral's folders do; transformers' slow
     * LlamaTokenizer cannot read it, so no tokenizer_config.json claims it can. */
    int sentencepiece = !strcmp(tokenizer_file_name(tok), "tokenizer.model");
    int rc = (hf->chat_template && chat_template_from_name(hf->chat_template, &tmpl, err)) ||
             copy_file(hf->tokenizer_path, model, err) ||
             (sentencepiece && write_tokenizer_config(dir, tok, tmpl, err)) ||
             (sentencepiece &&
              write_json(dir, "special_tokens_map.json",
                         json_pack("{s:s, s:s, s:s}", "bos_token", tokenizer_id_piece(tok, tokenizer_bos_id(tok)),
                                   "eos_token", tokenizer_id_piece(tok, tokenizer_eos_id(tok)), "unk_token",
                                   unk ? unk : "<unk>"),
                         err)) ||
             write_json(dir, "generation_config.json",
                        json_pack("{s:i, s:i}", "bos_token_id", tokenizer_bos_id(tok), "eos_token_id",
                                  tokenizer_eos_id(tok)),
                        err)
                 ? -1
                 : 0;
    free(model);
    tokenizer_free(tok);
    return rc;
}

/* Whether model.from's tokenizer files describe the run's tokenizer: it has a tokenizer.model
 * or tekken.json equal to the run's, or the run has none of its own. */
static int from_matches(const gale_hf_files *hf)
{
    if (!hf->tokenizer_path)
        return 1;
    char ours[65], theirs[65];
    gale_error ignored;
    if (gale_sha256_file_hex(hf->tokenizer_path, ours, &ignored))
        return 0;
    int same = 0;
    for (int i = 0; i < 2 && !same; i++) {
        char *file = gale_path_join(hf->from_dir, tokenizer_file_names[i]);
        same = gale_sha256_file_hex(file, theirs, &ignored) == 0 && !strcmp(ours, theirs);
        free(file);
    }
    return same;
}

int hf_files_write(const char *dir, const gale_hf_files *hf, gale_error *err)
{
    if (!hf)
        return 0;
    if (hf->tokenizer_path && write_ours(dir, hf, err))
        return -1;
    if (!hf->from_dir || !from_matches(hf))
        return 0;
    for (size_t i = 0; i < sizeof carried / sizeof *carried; i++) {
        char *from = gale_path_join(hf->from_dir, carried[i]), *to = gale_path_join(dir, carried[i]);
        int rc = gale_path_exists(from) ? copy_file(from, to, err) : 0;
        free(from);
        free(to);
        if (rc)
            return -1;
    }
    return 0;
}
