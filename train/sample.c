/* sample: softmax at a temperature, nucleus cut, inverse-CDF draw; a KV-cache forward of the
 * prompt, then of each drawn token. */
#include "train/sample.h"

#include <math.h>
#include <stdlib.h>

#include "model/rng.h"
#include "util/progress.h"

typedef struct scored {
    double p;
    int32_t id;
} scored;

/* most probable first; equal ones by lower id, so a draw is reproducible */
static int by_prob_desc(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int32_t sample_pick(const float *logits, int vocab, double temperature, double top_p, double u)
{
    int32_t best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    if (temperature <= 0)
        return best;
    scored *s = gale_xmalloc(vocab * sizeof *s);
    double total = 0;
    for (int i = 0; i < vocab; i++) {
        s[i].p = exp((logits[i] - logits[best]) / temperature);
        s[i].id = i;
        total += s[i].p;
    }
    qsort(s, vocab, sizeof *s, by_prob_desc);
    /* the nucleus: the first n tokens whose mass reaches top_p */
    int n = 0;
    double mass = 0;
    while (n < vocab && (n == 0 || mass < top_p * total))
        mass += s[n++].p;
    double target = u * mass, cum = 0;
    int32_t pick = s[n - 1].id;
    for (int i = 0; i < n; i++) {
        cum += s[i].p;
        if (target < cum) {
            pick = s[i].id;
            break;
        }
    }
    free(s);
    return pick;
}

int sample_generate(struct model *m, const int32_t *prompt, size_t n_prompt, const gale_sample_options *o,
                    gale_ids *out, sample_token_fn on_token, void *ctx, gale_sample_stats *stats,
                    gale_error *err)
{
    const struct model_config *cfg = model_get_config(m);
    if (n_prompt == 0)
        return gale_fail(err, "the prompt has no tokens");
    size_t limit = (size_t)cfg->max_position_embeddings;
    if (n_prompt >= limit)
        return gale_fail(err, "the prompt has %zu tokens: no room before max_position_embeddings (%zu)", n_prompt,
                         limit);
    if (o->max_new <= 0)
        return 0;
    /* the last token drawn is never run: the cache holds at most n_prompt + max_new - 1 */
    size_t max_len = n_prompt + (size_t)o->max_new - 1 < limit - 1 ? n_prompt + (size_t)o->max_new - 1 : limit - 1;
    struct model_kv_cache *kc = model_kv_cache_create(m, (int)max_len, err);
    if (!kc)
        return -1;
    float *logits = gale_xmalloc(cfg->vocab_size * sizeof *logits);
    size_t first_new = out->n;
    double start = progress_now(), in_callbacks = 0;
    int rc = model_forward_next(m, kc, prompt, (int)n_prompt, logits, err);
    double prefilled = progress_now();
    for (int t = 0; rc == 0; t++) {
        int32_t id = sample_pick(logits, cfg->vocab_size, o->temperature, o->top_p, gale_rng_uniform(o->seed, t));
        gale_ids_push(out, id);
        if (on_token) {
            double before = progress_now();
            on_token(out->v + first_new, out->n - first_new, ctx);
            in_callbacks += progress_now() - before;
        }
        if (id == o->eos_id || t + 1 == o->max_new || n_prompt + t + 1 >= limit)
            break;
        rc = model_forward_next(m, kc, &id, 1, logits, err);
    }
    if (stats) {
        stats->prefill_s = prefilled - start;
        stats->generate_s = progress_now() - prefilled - in_callbacks;
    }
    free(logits);
    model_kv_cache_free(kc);
    return rc;
}
