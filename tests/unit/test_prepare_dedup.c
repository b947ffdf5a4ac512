/* test_prepare_dedup: exact and near deduplication against planted ground truth. Real
 * documents (English Debian fortunes, natural near duplicates among them removed first by
 * brute-force Jaccard) get planted copies: exact ones (case and spacing changed), near ones
 * (a few words substituted, deleted or inserted) and far ones (heavily rewritten). With
 * the default 14 x 8 bands and threshold 0.8 the removed set must have precision >= 0.99
 * and recall >= 0.95 on copies whose true Jaccard is >= 0.85, exact copies must all be
 * found as exact, and a zero or small memory budget (band keys and shingle sets of all or
 * the later documents spilled to disk) must give the same decisions. Also: Jaccard of known sets, and bottom-k when sets are capped. */
#include <dirent.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "data/dedup.h"
#include "data/normalize.h"
#include "data/reader.h"
#include "util/file.h"

#define MAX_BASE 1500
#define N_EXACT 150
#define N_NEAR 400
#define N_FAR 150

typedef struct corpus {
    char **text;
    int *source;        /* planted copies: index of the original; -1 for originals */
    char kind_of[8192]; /* 'o' original, 'e' exact copy, 'n' near copy, 'f' far copy */
    size_t n, cap;
} corpus;

static void corpus_push(corpus *c, char *text, int source, char kind)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 1024;
        c->text = realloc(c->text, c->cap * sizeof *c->text);
        c->source = realloc(c->source, c->cap * sizeof *c->source);
    }
    c->text[c->n] = text;
    c->source[c->n] = source;
    c->kind_of[c->n] = kind;
    c->n++;
}

static uint64_t rng_state = 12345;
static uint64_t rng(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static size_t count_words(const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p;) {
        while (*p == ' ' || *p == '\n' || *p == '\t')
            p++;
        if (!*p)
            break;
        n++;
        while (*p && *p != ' ' && *p != '\n' && *p != '\t')
            p++;
    }
    return n;
}

/* The document with n_edits random word edits (substitute, delete or insert). */
static char *edit_words(const char *s, int n_edits)
{
    char *copy = strdup(s);
    char *words[4096];
    size_t n = 0;
    for (char *tok = strtok(copy, " \n\t"); tok && n < 4000; tok = strtok(NULL, " \n\t"))
        words[n++] = tok;
    char inserted[64][16];
    for (int e = 0; e < n_edits && e < 64 && n > 2; e++) {
        size_t at = rng() % n;
        snprintf(inserted[e], sizeof inserted[e], "zq%llu", (unsigned long long)(rng() % 100000));
        switch (rng() % 3) {
        case 0:
            words[at] = inserted[e];
            break;
        case 1:
            memmove(words + at, words + at + 1, (n - at - 1) * sizeof *words);
            n--;
            break;
        default:
            memmove(words + at + 1, words + at, (n - at) * sizeof *words);
            words[at] = inserted[e];
            n++;
        }
    }
    gale_bytes out = {0};
    for (size_t i = 0; i < n; i++) {
        if (i)
            gale_bytes_push(&out, ' ');
        gale_bytes_append(&out, words[i], strlen(words[i]));
    }
    gale_bytes_push(&out, 0);
    free(copy);
    return (char *)out.v;
}

/* Upper case and doubled spaces: the same exact-normalised text. */
static char *exact_variant(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(2 * n + 4);
    size_t k = 0;
    out[k++] = ' ';
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        out[k++] = ch >= 'a' && ch <= 'z' ? (char)(ch - 32) : ch;
        if (ch == ' ')
            out[k++] = '\t';
    }
    out[k] = 0;
    return out;
}

static void shingles_of(const minhasher *m, const char *text, shingle_set *out)
{
    gale_bytes norm = {0};
    normalize_near(text, strlen(text), &norm);
    minhash_shingles(m, (const char *)norm.v, norm.n, out);
    gale_bytes_free(&norm);
}

/* Reads fortunes of at least 40 words, dropping any whose Jaccard with one already taken is
 * >= 0.5, so the only duplicates are the planted ones. */
static int load_base(corpus *c, const minhasher *m)
{
    const char *files[] = {"fortunes", "literature", "people", "wisdom", "science", "politics", "work",
                           "humorists", "computers", "love", "education", "law"};
    reader_options opt = {.mode = TEXT_MODE_SEPARATOR, .separator = "%"};
    shingle_set *sets = calloc(MAX_BASE, sizeof *sets);
    for (size_t f = 0; f < sizeof files / sizeof *files && c->n < MAX_BASE; f++) {
        char path[256];
        snprintf(path, sizeof path, "/usr/share/games/fortunes/%s", files[f]);
        doc_reader *r = reader_open(path, &opt, NULL);
        if (!r)
            continue;
        reader_record rec;
        while (c->n < MAX_BASE && reader_next(r, &rec, NULL) == 1) {
            if (rec.status != RECORD_OK)
                continue;
            char *text = strndup(rec.text, rec.len);
            if (count_words(text) < 40) {
                free(text);
                continue;
            }
            shingles_of(m, text, &sets[c->n]);
            int natural_dup = 0;
            for (size_t j = 0; j < c->n && !natural_dup; j++)
                natural_dup = shingle_jaccard(sets[j].v, sets[j].n, sets[c->n].v, sets[c->n].n, 1u << 30) >= 0.5;
            if (natural_dup) {
                free(text);
                continue;
            }
            corpus_push(c, text, -1, 'o');
        }
        reader_close(r);
    }
    for (size_t i = 0; i < MAX_BASE; i++)
        shingle_set_free(&sets[i]);
    free(sets);
    return c->n >= 600 ? 0 : -1;
}

static void run_dedup(const corpus *c, const dedup_options *opt, dedup_fate *fate, uint64_t *dup_of)
{
    gale_error err;
    dedup_index *d = dedup_index_create(opt, &err);
    dedup_features f = {0};
    gale_bytes scratch = {0};
    for (size_t i = 0; i < c->n; i++) {
        dedup_features_compute(opt, dedup_index_minhasher(d), c->text[i], strlen(c->text[i]), 0, &scratch, &f);
        CHECK(dedup_index_add(d, i, &f, &err) == (int64_t)i);
    }
    CHECK(dedup_resolve(d, MPI_COMM_WORLD, &err) == 0);
    for (size_t i = 0; i < c->n; i++)
        fate[i] = dedup_fate_of(d, i, &dup_of[i]);
    if (opt->memory_budget < (64 << 20))
        CHECK(dedup_spilled_bytes(d) > 0);
    dedup_features_free(&f);
    gale_bytes_free(&scratch);
    dedup_index_free(d);
}

static void test_planted(void)
{
    minhash_params mp = minhash_default_params();
    minhasher *m = minhasher_create(&mp);
    corpus c = {0};
    if (load_base(&c, m) < 0) {
        check_skip("fewer than 600 fortunes of 40+ words under /usr/share/games/fortunes");
        minhasher_free(m);
        return;
    }
    size_t n_base = c.n;
    for (int i = 0; i < N_EXACT; i++) {
        int src = (int)(rng() % n_base);
        corpus_push(&c, exact_variant(c.text[src]), src, 'e');
    }
    for (int i = 0; i < N_NEAR; i++) {
        int src = (int)(rng() % n_base);
        int edits = 1 + (int)(count_words(c.text[src]) * (rng() % 4) / 100);
        corpus_push(&c, edit_words(c.text[src], edits), src, 'n');
    }
    for (int i = 0; i < N_FAR; i++) {
        int src = (int)(rng() % n_base);
        corpus_push(&c, edit_words(c.text[src], (int)count_words(c.text[src]) / 3), src, 'f');
    }

    /* ground truth: the true Jaccard of each planted copy with its original (recall), and
     * its best true Jaccard with any other document of the same origin (precision: two
     * copies of one original may match each other better than the original, and clusters
     * are transitive: a copy matching another copy that matches the original goes too) */
    double *jaccard = calloc(c.n, sizeof *jaccard), *best = calloc(c.n, sizeof *best);
    shingle_set *sets = calloc(c.n, sizeof *sets);
    for (size_t i = 0; i < c.n; i++)
        shingles_of(m, c.text[i], &sets[i]);
    for (size_t i = n_base; i < c.n; i++) {
        size_t src = (size_t)c.source[i];
        jaccard[i] = best[i] = shingle_jaccard(sets[i].v, sets[i].n, sets[src].v, sets[src].n, 1u << 30);
        for (size_t j = n_base; j < c.n; j++)
            if (j != i && c.source[j] == c.source[i]) {
                double jj = shingle_jaccard(sets[i].v, sets[i].n, sets[j].v, sets[j].n, 1u << 30);
                best[i] = jj > best[i] ? jj : best[i];
            }
    }
    for (size_t i = 0; i < c.n; i++)
        shingle_set_free(&sets[i]);
    free(sets);

    dedup_options opt = {.exact = 1, .near = 1, .threshold = 0.8, .minhash = mp, .memory_budget = 64 << 20,
                         .spill_dir = "/tmp"};
    dedup_fate *fate = calloc(c.n, sizeof *fate), *fate_spilled = calloc(c.n, sizeof *fate);
    uint64_t *dup = calloc(c.n, sizeof *dup), *dup_spilled = calloc(c.n, sizeof *dup);
    run_dedup(&c, &opt, fate, dup);

    size_t removed = 0, true_positive = 0, should = 0, found = 0, exact_found = 0;
    for (size_t i = 0; i < c.n; i++) {
        int planted_match = c.kind_of[i] == 'e' || (c.source[i] >= 0 && best[i] >= 0.8);
        if (fate[i] != DEDUP_KEEP) {
            removed++;
            true_positive += planted_match;
            /* a removed document points at an earlier one that is kept */
            CHECK(dup[i] < i && fate[dup[i]] == DEDUP_KEEP);
        }
        if (c.kind_of[i] == 'e')
            exact_found += fate[i] == DEDUP_EXACT && dup[i] == (uint64_t)c.source[i];
        if (c.source[i] >= 0 && c.kind_of[i] != 'e' && jaccard[i] >= 0.85) {
            should++;
            found += fate[i] != DEDUP_KEEP;
        }
    }
    double precision = removed ? (double)true_positive / (double)removed : 0;
    double recall = should ? (double)found / (double)should : 0;
    printf("planted: %zu originals, %zu copies; removed %zu, precision %.4f, recall %.4f on %zu near copies "
           "with J >= 0.85, exact copies found %zu/%d\n",
           n_base, c.n - n_base, removed, precision, recall, should, exact_found, N_EXACT);
    CHECK(should >= 100);
    CHECK(precision >= 0.99);
    CHECK(recall >= 0.95);
    CHECK(exact_found == N_EXACT);
    for (size_t i = 0; i < n_base; i++)
        CHECK(fate[i] == DEDUP_KEEP);

    /* everything spilled, and spilling from the middle on: the same decisions */
    const size_t budgets[] = {0, 200000};
    for (int k = 0; k < 2; k++) {
        opt.memory_budget = budgets[k];
        run_dedup(&c, &opt, fate_spilled, dup_spilled);
        CHECK(!memcmp(fate, fate_spilled, c.n * sizeof *fate) && !memcmp(dup, dup_spilled, c.n * sizeof *dup));
    }

    for (size_t i = 0; i < c.n; i++)
        free(c.text[i]);
    free(c.text);
    free(c.source);
    free(jaccard);
    free(best);
    free(fate);
    free(fate_spilled);
    free(dup);
    free(dup_spilled);
    minhasher_free(m);
}

static void test_jaccard(void)
{
    uint32_t a[10], b[10];
    for (uint32_t i = 0; i < 10; i++) {
        a[i] = i + 1;      /* 1..10 */
        b[i] = i + 6;      /* 6..15 */
    }
    CHECK(shingle_jaccard(a, 10, b, 10, 100) == 5.0 / 15.0);
    CHECK(shingle_jaccard(a, 10, a, 10, 100) == 1.0);
    CHECK(shingle_jaccard(a, 0, a, 10, 100) == 0.0);
    /* capped at 10: bottom-10 of the union is 1..10, of which 6..10 are in both */
    CHECK(shingle_jaccard(a, 10, b, 10, 10) == 0.5);

    /* shingles: 5-word windows; a text of fewer words is one shingle */
    minhash_params p = minhash_default_params();
    minhasher *m = minhasher_create(&p);
    shingle_set s = {0};
    minhash_shingles(m, "a b c d e f g", 13, &s);
    CHECK(s.n == 3);
    minhash_shingles(m, "a b c", 5, &s);
    CHECK(s.n == 1);
    minhash_shingles(m, "", 0, &s);
    CHECK(s.n == 0);
    /* a long text (radix-sorted set): sorted, distinct, one per distinct window */
    gale_bytes text = {0};
    for (int i = 0; i < 3000; i++) {
        char w[16];
        int k = snprintf(w, sizeof w, "%sw%d", i ? " " : "", (i * 7) % 1000);
        gale_bytes_append(&text, w, (size_t)k);
    }
    minhash_shingles(m, (const char *)text.v, text.n, &s);
    CHECK(s.n == 1000); /* the word sequence repeats every 1000 words */
    for (size_t i = 1; i < s.n; i++)
        CHECK(s.v[i - 1] < s.v[i]);
    gale_bytes_free(&text);
    p.max_shingles = 2;
    minhasher *capped = minhasher_create(&p);
    minhash_shingles(capped, "a b c d e f g h i j", 19, &s);
    CHECK(s.n == 2 && s.v[0] < s.v[1]);
    shingle_set_free(&s);
    minhasher_free(m);
    minhasher_free(capped);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    test_jaccard();
    test_planted();
    MPI_Finalize();
    return check_report("test_prepare_dedup");
}
