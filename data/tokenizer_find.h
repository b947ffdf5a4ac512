/* tokenizer_find: turns what a user calls a tokenizer into the path of its file. A tokenizer
 * is named either by a path or by a version name (mistral-v1, mistral-v3, tekken-240718,
 * tekken-240911), so that configs work on any machine where the tokenizers are installed: the
 * names are looked up in the folders of $GALE_TOKENIZERS (colon-separated), then in the data
 * folder of the `mistral-common` Python package (which ships Mistral's own tokenizer files)
 * wherever pip put it: a virtual environment, ~/.local, /usr/local or /usr. */
#ifndef GALE_DATA_TOKENIZER_FIND_H
#define GALE_DATA_TOKENIZER_FIND_H

#include "util/error.h"

/* The path of the tokenizer called name_or_path (malloc'd): name_or_path itself when it is
 * an existing file or not a known name, else the first file found for the name. NULL with a
 * message listing every place looked in when a name is found nowhere. */
char *tokenizer_find(const char *name_or_path, gale_error *err);

/* The known names, comma-separated ("mistral-v1, mistral-v3, ..."), for help texts. */
const char *tokenizer_known_names(void);

#endif
