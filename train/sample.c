/* sample: softmax at a temperature, nucleus cut, inverse-CDF draw; the forward is rerun
 * over the whole sequence for each token. */
#include "train/sample.h"

#include <math.h>
#include <stdlib.h>

#include "model/rng.h"

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
                    gale_ids *out, sample_token_fn on_token, void *ctx, gale_error *err)
{
    const struct model_config *cfg = model_get_config(m);
    if (n_prompt == 0)
        return gale_fail(err, "the prompt has no tokens");
    size_t limit = (size_t)cfg->max_position_embeddings;
    if (n_prompt >= limit)
        return gale_fail(err, "the prompt has %zu tokens: no room before max_position_embeddings (%zu)", n_prompt,
                         limit);
    gale_ids seq = {0};
    gale_ids_append(&seq, prompt, n_prompt);
    size_t first_new = out->n;
    float *logits = NULL;
    int rc = 0;
    for (int t = 0; t < o->max_new && seq.n < limit; t++) {
        struct model_batch mb = {.batch = 1, .seq = (int)seq.n, .tokens = seq.v};
        struct model_loss loss;
        if (model_forward(m, &mb, 0, &loss, err)) {
            rc = -1;
            break;
        }
        logits = gale_xrealloc(logits, seq.n * cfg->vocab_size * sizeof *logits);
        model_logits_download(m, logits);
        const float *last = logits + (seq.n - 1) * cfg->vocab_size;
        int32_t id = sample_pick(last, cfg->vocab_size, o->temperature, o->top_p, gale_rng_uniform(o->seed, t));
        gale_ids_push(&seq, id);
        gale_ids_push(out, id);
        if (on_token)
            on_token(out->v + first_new, out->n - first_new, ctx);
        if (id == o->eos_id)
            break;
    }
    free(logits);
    gale_ids_free(&seq);
    return rc;
}
