/* tokenizer_find: tokenizer names to files; see tokenizer_find.h. */
#include "data/tokenizer_find.h"

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/file.h"
#include "util/vec.h"

typedef struct {
    const char *name;
    const char *own_file;            /* its name in a $GALE_TOKENIZERS folder */
    const char *mistral_common_file; /* its name in mistral_common/data */
} known_tokenizer;

/* Mistral 7B v0.1 and Mixtral 8x7B use v1; Mistral 7B v0.3 and Mixtral 8x22B use v3; Mistral
 * NeMo uses Tekken 240718, Ministral and Pixtral 240911. */
static const known_tokenizer known[] = {
    {"mistral-v1", "mistral-v1.model", "tokenizer.model.v1"},
    {"mistral-v3", "mistral-v3.model", "mistral_instruct_tokenizer_240323.model.v3"},
    {"tekken-240718", "tekken-240718.json", "tekken_240718.json"},
    {"tekken-240911", "tekken-240911.json", "tekken_240911.json"},
};

/* Where pip installs mistral_common, as glob patterns (python3.N differs by system). */
static const char *const python_roots[] = {
    "$VIRTUAL_ENV/lib/python3*/site-packages",
    "$HOME/.local/lib/python3*/site-packages",
    "/usr/local/lib/python3*/dist-packages",
    "/usr/local/lib/python3*/site-packages",
    "/usr/lib/python3/dist-packages",
    "/usr/lib/python3*/site-packages",
};

const char *tokenizer_known_names(void)
{
    return "mistral-v1, mistral-v3, tekken-240718, tekken-240911";
}

/* pattern with a leading $VAR replaced by the variable's value; NULL when it is unset. */
static char *expand_root(const char *pattern)
{
    if (pattern[0] != '$')
        return gale_xstrdup(pattern);
    const char *slash = strchr(pattern, '/');
    char var[32];
    snprintf(var, sizeof var, "%.*s", (int)(slash - pattern - 1), pattern + 1);
    const char *value = getenv(var);
    if (!value || !value[0])
        return NULL;
    size_t n = strlen(value) + strlen(slash) + 1;
    char *out = gale_xmalloc(n);
    snprintf(out, n, "%s%s", value, slash);
    return out;
}

/* Appends "  PLACE\n" to the list of places looked in. */
static void note_place(gale_bytes *looked, const char *place)
{
    gale_bytes_append(looked, "\n  ", 3);
    gale_bytes_append(looked, place, strlen(place));
}

/* The first existing match of dir/file, where dir may be a glob pattern. */
static char *find_in(const char *dir_pattern, const char *file, gale_bytes *looked)
{
    char *pattern = gale_path_join(dir_pattern, file);
    note_place(looked, pattern);
    glob_t g;
    char *found = NULL;
    if (glob(pattern, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc && !found; i++)
            if (gale_path_exists(g.gl_pathv[i]))
                found = gale_xstrdup(g.gl_pathv[i]);
        globfree(&g);
    }
    free(pattern);
    return found;
}

static char *find_known(const known_tokenizer *k, gale_bytes *looked)
{
    char *found = NULL;
    const char *env = getenv("GALE_TOKENIZERS");
    if (env && env[0]) {
        char *dirs = gale_xstrdup(env), *save = NULL;
        for (char *d = strtok_r(dirs, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
            found = find_in(d, k->own_file, looked);
            if (!found)
                found = find_in(d, k->mistral_common_file, looked);
        }
        free(dirs);
    } else {
        note_place(looked, "$GALE_TOKENIZERS (not set)");
    }
    for (size_t i = 0; i < sizeof python_roots / sizeof *python_roots && !found; i++) {
        char *root = expand_root(python_roots[i]);
        if (!root)
            continue;
        char *dir = gale_path_join(root, "mistral_common/data");
        found = find_in(dir, k->mistral_common_file, looked);
        free(dir);
        free(root);
    }
    return found;
}

char *tokenizer_find(const char *name_or_path, gale_error *err)
{
    const known_tokenizer *k = NULL;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (!strcmp(name_or_path, known[i].name))
            k = &known[i];
    if (!k || gale_path_exists(name_or_path))
        return gale_xstrdup(name_or_path);
    gale_bytes looked = {0};
    char *found = find_known(k, &looked);
    if (!found) {
        gale_bytes_append(&looked, "", 1);
        gale_fail(err,
                  "tokenizer %s: not found; looked in:%s\n"
                  "install the mistral-common Python package (launch/setup.sh does: pip install --no-deps "
                  "mistral-common), set GALE_TOKENIZERS to a folder holding %s, or give the file's path",
                  name_or_path, (const char *)looked.v, k->own_file);
    }
    gale_bytes_free(&looked);
    return found;
}
