/* metrics: metrics.jsonl, expert load, FLOPs. */
#include "train/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/file.h"
#include "util/vec.h"

json_t *metrics_read(const char *path, gale_error *err)
{
    size_t len;
    char *text = gale_read_file(path, &len, err);
    if (!text)
        return NULL;
    json_t *records = json_array();
    char *line = text;
    for (int lineno = 1; line < text + len; lineno++) {
        char *eol = strchr(line, '\n');
        if (eol)
            *eol = 0;
        if (*line) {
            json_error_t jerr;
            json_t *r = json_loads(line, 0, &jerr);
            if (!json_is_object(r)) {
                gale_fail(err, "%s:%d: not a JSON object: %s", path, lineno, r ? "other value" : jerr.text);
                json_decref(r);
                json_decref(records);
                free(text);
                return NULL;
            }
            json_array_append_new(records, r);
        }
        if (!eol)
            break;
        line = eol + 1;
    }
    free(text);
    return records;
}

/* Rewrites path without the records of steps after keep_through_step. */
static int truncate_records(const char *path, long keep_through_step, gale_error *err)
{
    json_t *records = metrics_read(path, err);
    if (!records)
        return -1;
    gale_bytes out = {0};
    size_t i;
    json_t *r;
    json_array_foreach(records, i, r)
    {
        json_t *step = json_object_get(r, "step");
        if (json_is_integer(step) && json_integer_value(step) > keep_through_step)
            continue;
        char *line = json_dumps(r, JSON_COMPACT);
        gale_bytes_append(&out, line, strlen(line));
        gale_bytes_push(&out, '\n');
        free(line);
    }
    int rc = gale_write_file_atomic(path, out.v ? (const char *)out.v : "", out.n, err);
    gale_bytes_free(&out);
    json_decref(records);
    return rc;
}

FILE *metrics_open(const char *run_dir, long keep_through_step, gale_error *err)
{
    char *path = gale_path_join(run_dir, GALE_METRICS_FILE);
    FILE *f = NULL;
    if (keep_through_step >= 0 && gale_path_exists(path) && truncate_records(path, keep_through_step, err))
        goto done;
    f = fopen(path, "a");
    if (!f)
        gale_fail_errno(err, "%s", path);
done:
    free(path);
    return f;
}

int metrics_append(FILE *f, json_t *record, gale_error *err)
{
    char *line = json_dumps(record, JSON_COMPACT | JSON_REAL_PRECISION(17));
    int bad = fprintf(f, "%s\n", line) < 0 || fflush(f) != 0;
    free(line);
    return bad ? gale_fail_errno(err, "writing %s", GALE_METRICS_FILE) : 0;
}

void expert_load_summarise(const int64_t *counts, int experts, gale_expert_load *out)
{
    double sum = 0, sumsq = 0;
    out->min = INFINITY;
    out->max = 0;
    for (int e = 0; e < experts; e++) {
        double c = (double)counts[e];
        sum += c;
        sumsq += c * c;
        out->min = fmin(out->min, c);
        out->max = fmax(out->max, c);
    }
    double mean = sum / experts;
    double var = fmax(0.0, sumsq / experts - mean * mean);
    out->cv = mean > 0 ? sqrt(var) / mean : 0;
}

void expert_load_count(const int32_t *selected, int layers, int rows, int k, int experts, int64_t *counts)
{
    for (int l = 0; l < layers; l++)
        for (size_t i = 0; i < (size_t)rows * k; i++) {
            int32_t e = selected[(size_t)l * rows * k + i];
            if (e >= 0 && e < experts)
                counts[(size_t)l * experts + e]++;
        }
}

double train_flops_per_token(const struct model_config *cfg, const struct model_layout *layout, int seq_len,
                             int frozen)
{
    double matmul_params = 0;
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        if (t->ndim != 2 || strstr(t->name, "embed_tokens"))
            continue;
        double n = (double)t->numel;
        if (cfg->num_experts && strstr(t->name, ".experts."))
            n *= (double)cfg->num_experts_per_tok / cfg->num_experts;
        matmul_params += n;
    }
    if (cfg->tie_word_embeddings) /* the tied lm_head multiplies with the embedding table */
        matmul_params += (double)cfg->vocab_size * cfg->hidden_size;
    /* forward 2, backward 2 for the inputs' gradient and 2 for the weights' unless frozen */
    return (frozen ? 4.0 : 6.0) * matmul_params + 12.0 * cfg->num_layers * cfg->num_heads * cfg->head_dim * (double)seq_len;
}

void format_duration(double seconds, char *buf, size_t size)
{
    if (!isfinite(seconds) || seconds < 0)
        seconds = 0;
    long s = lround(seconds);
    if (s >= 3600)
        snprintf(buf, size, "%ldh%02ldm", s / 3600, s % 3600 / 60);
    else if (s >= 60)
        snprintf(buf, size, "%ldm%02lds", s / 60, s % 60);
    else
        snprintf(buf, size, "%lds", s);
}
