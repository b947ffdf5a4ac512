/* hf_files: the tokenizer and generation files beside a checkpoint's weights, so that
 * transformers' AutoTokenizer, apply_chat_template and generate work on the folder as they
 * do on the hub's own Mistral and Llama 2 folders:
 *   tokenizer.model          the run's SentencePiece model (a Tekken file is kept as
 *                            tekken.json, with generation_config.json only: transformers has
 *                            no slow tokenizer that reads it)
 *   tokenizer_config.json    BOS added (no EOS), the special tokens (every control piece),
 *                            LlamaTokenizer, and the run's chat template as Jinja
 *   special_tokens_map.json  <s>, </s>, <unk>
 *   generation_config.json   bos_token_id, eos_token_id
 * When the run starts from a Hugging Face folder (model.from) with the same tokenizer, that
 * folder's files of these kinds (and its tokenizer.json) are carried over instead. */
#ifndef GALE_TRAIN_HF_FILES_H
#define GALE_TRAIN_HF_FILES_H

#include "util/error.h"

typedef struct gale_hf_files {
    const char *tokenizer_path; /* the run's tokenizer file, or NULL (then no files of ours) */
    const char *chat_template;  /* "v1", "v3" or "llama2"; NULL: v3 when the tokenizer has the
                                   [INST] control token, else v1 */
    const char *from_dir;       /* model.from, or NULL */
} gale_hf_files;

/* Writes the files into the checkpoint folder dir (each atomically). hf may be NULL. */
int hf_files_write(const char *dir, const gale_hf_files *hf, gale_error *err);

#endif
