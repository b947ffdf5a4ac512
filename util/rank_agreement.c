/* rank_agreement: a SHA-256 of the text from rank 0, a flag all-reduced so that every rank
 * stops together, and only on a difference rank 0's whole text and the finding rank's line. */
#define _GNU_SOURCE
#include "util/rank_agreement.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/hash.h"

static void append(char **text, const char *line)
{
    size_t have = *text ? strlen(*text) : 0, add = strlen(line);
    *text = gale_xrealloc(*text, have + add + 2);
    memcpy(*text + have, line, add);
    (*text)[have + add] = '\n';
    (*text)[have + add + 1] = 0;
}

static int compare_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void rank_agreement_lines(char **text, const char *prefix, const json_t *j)
{
    char *path = NULL;
    if (json_is_object(j)) {
        size_t n = json_object_size(j), i = 0;
        const char **keys = gale_xmalloc((n ? n : 1) * sizeof *keys);
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)j, key, v) keys[i++] = key;
        qsort(keys, n, sizeof *keys, compare_keys);
        for (i = 0; i < n; i++) {
            if (asprintf(&path, "%s%s%s", prefix, prefix[0] ? "." : "", keys[i]) < 0)
                abort();
            rank_agreement_lines(text, path, json_object_get(j, keys[i]));
            free(path);
        }
        free(keys);
    } else if (json_is_array(j)) {
        for (size_t i = 0; i < json_array_size(j); i++) {
            if (asprintf(&path, "%s[%zu]", prefix, i) < 0)
                abort();
            rank_agreement_lines(text, path, json_array_get(j, i));
            free(path);
        }
    } else {
        char *value = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
        if (asprintf(&path, "%s=%s", prefix, value ? value : "?") < 0)
            abort();
        append(text, path);
        free(path);
        free(value);
    }
}

/* The first line of mine that is not in rank 0's text at the same place. */
static void first_difference(const char *mine, const char *theirs, char *out, size_t cap)
{
    while (*mine || *theirs) {
        size_t a = strcspn(mine, "\n"), b = strcspn(theirs, "\n");
        if (a != b || memcmp(mine, theirs, a) != 0) {
            snprintf(out, cap, "%.*s, rank 0 has %.*s", (int)a, a ? mine : "(nothing)", (int)b,
                     b ? theirs : "(nothing)");
            return;
        }
        mine += a + (mine[a] == '\n');
        theirs += b + (theirs[b] == '\n');
    }
    snprintf(out, cap, "(the same lines)");
}

int rank_agreement_check(MPI_Comm comm, const char *what, const char *text, gale_error *err)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    if (size == 1)
        return 0;
    char mine[65], root[65];
    gale_sha256_hex(text, strlen(text), mine);
    memcpy(root, mine, sizeof root);
    MPI_Bcast(root, sizeof root, MPI_CHAR, 0, comm);
    int differs = strcmp(mine, root) != 0 ? rank : INT_MAX, first = INT_MAX;
    MPI_Allreduce(&differs, &first, 1, MPI_INT, MPI_MIN, comm);
    if (first == INT_MAX)
        return 0;
    /* rank 0's text to every rank; the first differing rank names the line */
    long len = rank == 0 ? (long)strlen(text) : 0;
    MPI_Bcast(&len, 1, MPI_LONG, 0, comm);
    char *theirs = gale_xmalloc((size_t)len + 1);
    if (rank == 0)
        memcpy(theirs, text, (size_t)len);
    MPI_Bcast(theirs, (int)len, MPI_CHAR, 0, comm);
    theirs[len] = 0;
    char line[1024] = "";
    if (rank == first)
        first_difference(text, theirs, line, sizeof line);
    free(theirs);
    MPI_Bcast(line, sizeof line, MPI_CHAR, first, comm);
    return gale_fail(err, "ranks disagree on %s: rank %d has %s", what, first, line);
}
