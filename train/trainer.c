/* trainer: set-up, resume, and the step loop of `gale train`. */
#define _GNU_SOURCE
#include "train/trainer.h"

#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "data/loader.h"
#include "data/manifest.h"
#include "data/tokenizer_find.h"
#include "model/cpu/blas_core.h"
#include "model/lora_io.h"
#include "model/model.h"
#include "model/rng.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "train/checkpoint.h"
#include "train/comm.h"
#include "train/eval.h"
#include "train/grad_sync.h"
#include "train/metrics.h"
#include "train/run_agreement.h"
#include "train/tensorboard.h"
#include "util/file.h"
#include "util/hash.h"
#include "util/lock.h"

/* Assumed peak of one core when backend.peak_tflops is not given: 2.5 GHz × 32 fp32
 * FLOP/cycle (two 8-wide AVX2 FMA units). */
#define ASSUMED_CORE_FLOPS (2.5e9 * 32)
/* Tensors named per list (weights, gradients) in a non-finite diagnostic. */
#define MAX_NAMED_TENSORS 8

/* The one piece of process-wide state: a signal handler can only reach a static, and
 * sig_atomic_t is the only type it may write. */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
    stop_signal = sig;
}

/* In run.dir while a job trains there (util/lock.h). */
#define RUN_LOCK_FILE "gale.lock"

typedef struct trainer {
    const gale_run_config *cfg;
    gale_comm comm;        /* world, expert-parallel and data-parallel groups */
    int comm_ready;
    int rank, world;
    struct model_config mc;
    struct model *model;
    struct gale_backend *be;
    struct lora_config lora;  /* rank 0: full fine-tuning */
    struct adamw opt;
    int opt_ready;
    struct grad_sync sync; /* the step's gradient buckets and ZeRO-1's pieces */
    int sync_ready;
    gale_lock run_lock;          /* rank 0: run.dir is this job's */
    gale_loader *loader;
    gale_batch *micro;     /* the grad_accum micro-batches of a step */
    int32_t *segments;     /* one micro-batch of segment ids for the model */
    const char **dirs;     /* data.sources paths */
    double *weights;
    gale_schedule sched;
    gale_train_state state;
    char *tokenizer_path;  /* copied into checkpoints; NULL when unknown */
    char *chat_template;   /* the SFT data's template, for the checkpoints' tokenizer_config.json */
    FILE *metrics;
    tb_writer *tb;         /* the same records as TensorBoard events */
    int eval_on;
    double flops_per_token, peak_flops;
    long tokens_per_step;  /* input positions of a global batch */
    int64_t *expert_counts; /* [layers * experts] of the current step */
} trainer;

typedef struct step_result {
    double loss, ce_loss, aux_loss, z_loss, grad_norm, lr;
    int64_t n_targets;
    int64_t dropped;  /* routing slots the capacity dropped, over every layer and rank */
    int skipped;
} step_result;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int trainer_lora_config(const gale_run_config *c, struct lora_config *lc, gale_error *err)
{
    memset(lc, 0, sizeof *lc);
    if (c->lora.from) {
        if (lora_config_read(c->lora.from, lc, NULL, err)) {
            gale_error_prefix(err, "%s: lora.from", c->file);
            return -1;
        }
        if (c->lora.rank > 0 && c->lora.rank != lc->rank)
            return gale_fail(err, "%s: lora.rank is %ld but lora.from's adapters have r = %d", c->file, c->lora.rank,
                             lc->rank);
        lc->dropout = c->lora.dropout;
    } else if (c->lora.rank > 0) {
        *lc = (struct lora_config){(int)c->lora.rank, c->lora.alpha, c->lora.dropout, c->lora.target_mask,
                                   c->lora.rslora, c->lora.train_router};
    }
    return 0;
}

int trainer_model_config(const gale_run_config *cfg, struct model_config *mc, gale_error *err)
{
    json_t *base;
    char *source;
    if (cfg->model.config || cfg->model.from) {
        source = cfg->model.config ? gale_xstrdup(cfg->model.config) : gale_path_join(cfg->model.from, "config.json");
        json_error_t jerr;
        base = json_load_file(source, 0, &jerr);
        if (!json_is_object(base)) {
            gale_fail(err, "%s:%d: %s (from %s)", source, jerr.line, base ? "not a JSON object" : jerr.text,
                      cfg->model.config ? "model.config" : "model.from");
            json_decref(base);
            free(source);
            return -1;
        }
    } else {
        base = json_object();
        size_t len = strlen(cfg->file) + 32;
        source = gale_xmalloc(len);
        snprintf(source, len, "%s (model section)", cfg->file);
    }
    json_object_update(base, cfg->model.shape);
    char *text = json_dumps(base, 0);
    int rc = model_config_parse(text, source, mc, err);
    if (rc == 0 && cfg->moe.aux_coef >= 0)
        mc->router_aux_loss_coef = cfg->moe.aux_coef;
    free(text);
    free(source);
    json_decref(base);
    return rc;
}

/* What the first source's manifest says of its tokenizer: the file to copy into
 * checkpoints (when it is still there and still the same), and the BOS and EOS ids for a
 * model config that does not give them (transformers' generation stops at eos_token_id). */
static void adopt_data_tokenizer(trainer *t)
{
    gale_manifest man;
    gale_error err;
    if (manifest_read(&man, t->cfg->data.sources[0].path, &err) == 0) {
        char hex[65];
        char *path = man.tokenizer.path ? tokenizer_find(man.tokenizer.path, &err) : NULL;
        if (path && gale_sha256_file_hex(path, hex, &err) == 0 && !strcmp(hex, man.tokenizer.sha256))
            t->tokenizer_path = path;
        else
            free(path);
        json_t *prep = man.kind == GALE_SHARD_SFT && man.config_json ? json_loads(man.config_json, 0, NULL) : NULL;
        const char *tmpl = json_string_value(json_object_get(prep, "chat_template"));
        if (tmpl)
            t->chat_template = gale_xstrdup(tmpl);
        json_decref(prep);
        if (t->mc.bos_token_id < 0)
            t->mc.bos_token_id = man.tokenizer.bos_id;
        if (t->mc.eos_token_id < 0)
            t->mc.eos_token_id = man.tokenizer.eos_id;
    }
    manifest_free(&man);
    if (!t->tokenizer_path && t->rank == 0)
        fprintf(stderr, "gale train: note: the tokenizer recorded in %s/manifest.json is not found (or has changed): "
                        "checkpoints will have no tokenizer.model\n", t->cfg->data.sources[0].path);
}

static int open_data(trainer *t, gale_error *err)
{
    const gale_run_config *c = t->cfg;
    t->dirs = gale_xcalloc(c->data.n_sources, sizeof *t->dirs);
    t->weights = gale_xcalloc(c->data.n_sources, sizeof *t->weights);
    for (int i = 0; i < c->data.n_sources; i++) {
        t->dirs[i] = c->data.sources[i].path;
        t->weights[i] = c->data.sources[i].weight;
    }
    gale_loader_options lo = {
        .dirs = t->dirs,
        .weights = c->data.sources[0].weight > 0 ? t->weights : NULL, /* none given: by rows */
        .n_dirs = c->data.n_sources,
        .split = "train",
        .batch_rows = (int)c->data.micro_batch,
        .rank = t->rank,
        .world = t->world,
        .seed = c->run.seed,
        .prefetch = 2,
        .skip_bad_shards = c->data.on_bad_shard,
    };
    t->loader = loader_open(&lo, err);
    if (!t->loader)
        return -1;
    int seq = loader_seq_len(t->loader);
    if (seq != c->data.seq_len)
        return gale_fail(err, "%s: data.seq_len is %ld but %s holds rows of seq_len %d", c->file, c->data.seq_len,
                         t->dirs[0], seq);
    if (loader_vocab_size(t->loader) > t->mc.vocab_size)
        return gale_fail(err, "the data's vocabulary (%d) is larger than the model's vocab_size (%d)",
                         loader_vocab_size(t->loader), t->mc.vocab_size);
    if (seq > t->mc.max_position_embeddings)
        return gale_fail(err, "data.seq_len %d is beyond the model's max_position_embeddings %d", seq,
                         t->mc.max_position_embeddings);
    t->micro = gale_xcalloc(c->data.grad_accum, sizeof *t->micro);
    for (long i = 0; i < c->data.grad_accum; i++)
        batch_init(&t->micro[i], (int)c->data.micro_batch, seq);
    t->segments = gale_xmalloc((size_t)c->data.micro_batch * seq * sizeof *t->segments);
    if (c->run.eval_every > 0) {
        lo.split = "val";
        lo.one_pass = 1;
        lo.prefetch = 0;
        gale_loader *val = loader_open(&lo, err);
        if (!val)
            return -1;
        t->eval_on = loader_total_rows(val) > 0;
        loader_close(val);
        if (!t->eval_on && t->rank == 0)
            fprintf(stderr, "gale train: warning: the data has no val split; run.eval_every is ignored\n");
    }
    return 0;
}

/* What the optimizer trains: the whole model, or its adapters. */
static struct model_trainable trained(const trainer *t)
{
    struct model_trainable tr;
    model_trainable(t->model, &tr);
    return tr;
}


/* The base weights: a Hugging Face folder or a fresh init (deterministic in the seed). */
static int load_base(trainer *t, gale_error *err)
{
    if (t->cfg->model.from)
        return model_load_hf(t->model, t->cfg->model.from, err);
    model_init_random(t->model, t->mc.initializer_range, t->cfg->run.seed);
    return 0;
}

/* New adapters: lora.from's (PEFT's format), else PEFT's default init. */
static int start_adapters(trainer *t, gale_error *err)
{
    if (t->cfg->lora.from)
        return model_lora_load(t->model, t->cfg->lora.from, err);
    model_lora_init(t->model, t->cfg->run.seed);
    return 0;
}

/* From a checkpoint when the run has one, else a Hugging Face folder or a fresh init. A LoRA
 * checkpoint holds the adapters only: the frozen base comes from model.from every time. */
static int start_state(trainer *t, gale_error *err)
{
    const gale_run_config *c = t->cfg;
    char *ckpt = checkpoint_latest(c->run.dir, err);
    if (!ckpt && err->msg[0])
        return -1;
    if (!ckpt) {
        t->state.seed = c->run.seed;
        if (load_base(t, err))
            return -1;
        return t->lora.rank ? start_adapters(t, err) : 0;
    }
    int rc = -1;
    gale_loader_position pos;
    if (t->lora.rank && load_base(t, err))
        goto done;
    if (checkpoint_read_state(ckpt, &t->state, err) || checkpoint_load_weights(ckpt, t->model, &t->opt, err))
        goto done;
    if (!t->state.loader || loader_position_from_json(t->state.loader, &pos, err) || loader_seek(t->loader, &pos, err))
        goto done;
    if (t->state.seed != c->run.seed) {
        gale_fail(err, "run.seed is %llu but the checkpoint was trained with seed %llu",
                  (unsigned long long)c->run.seed, (unsigned long long)t->state.seed);
        goto done;
    }
    if (t->rank == 0) {
        printf("resuming from %s: step %ld, %lld tokens seen\n", ckpt, t->state.step, (long long)t->state.tokens_seen);
        if (t->state.world_size != t->world)
            printf("note: the checkpoint was written by %d rank(s), this run has %d: the global batch changes\n",
                   t->state.world_size, t->world);
    }
    rc = 0;
done:
    if (rc)
        gale_error_prefix(err, "resuming from %s", ckpt);
    free(ckpt);
    return rc;
}

static void print_effective_config(const trainer *t)
{
    json_t *run = run_config_to_json(t->cfg);
    char *run_text = json_dumps(run, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    char *model_text = model_config_to_json(&t->mc);
    printf("gale train: effective config (%s)\n%s\nmodel config.json:\n%s\n", t->cfg->file, run_text, model_text);
    printf("model: %s, %lld parameters; %d rank(s) x %d thread(s); AdamW moments of %zu parameters per rank%s\n",
           model_kind_name(t->mc.kind), model_config_num_params(&t->mc), t->world, omp_get_max_threads(),
           t->opt.numel, t->cfg->optim.zero ? " (ZeRO-1)" : "");
    char blas[256];
    blas_core_describe(blas, sizeof blas);
    printf("blas: %s\n", blas);
    if (t->comm.ep_size > 1)
        printf("layout: %d rank(s) = data parallel %d x expert parallel %d; a rank holds %d of %d experts per layer\n",
               t->world, t->comm.dp_size, t->comm.ep_size, t->mc.num_experts / t->comm.ep_size, t->mc.num_experts);
    printf("global batch: %ld rows x %ld tokens = %ld tokens/step, %ld steps; MFU against a peak of %.3g TFLOP/s (%s)\n",
           t->cfg->data.micro_batch * t->cfg->data.grad_accum * t->world, t->cfg->data.seq_len, t->tokens_per_step,
           t->sched.total, t->peak_flops / 1e12,
           t->cfg->backend.peak_tflops > 0 ? "backend.peak_tflops"
                                           : "assumed: 2.5 GHz x 32 fp32 FLOP/cycle per thread; set backend.peak_tflops");
    fflush(stdout);
    free(run_text);
    free(model_text);
    json_decref(run);
}

struct model_plan_layout trainer_plan_layout(const gale_run_config *cfg, const struct lora_config *lora,
                                             int world, int ep)
{
    return (struct model_plan_layout){
        .micro_batch = (int)cfg->data.micro_batch,
        .seq_len = (int)cfg->data.seq_len,
        .compute = cfg->backend.precision == GALE_PRECISION_BF16 ? GALE_BF16 : GALE_F32,
        .recompute = cfg->backend.recompute == GALE_RECOMPUTE_LAYER ? MODEL_RECOMPUTE_LAYER : MODEL_RECOMPUTE_NONE,
        .ep_size = ep,
        .ep_rank = 0,
        .dp_size = world / ep,
        .zero = cfg->optim.zero,
        .lora = lora,
    };
}

/* Refuses, before anything is allocated, a CPU run whose memory plan (gale plan) needs more
 * than the machine's physical memory. */
static int check_host_memory(trainer *t, gale_error *err)
{
    /* a rank's share of the experts: parallel.ep when it divides the world and the experts
     * (comm_create refuses it otherwise, naming the key) */
    int ep = (int)t->cfg->parallel.ep;
    if (ep < 2 || t->world % ep || !t->mc.num_experts || t->mc.num_experts % ep)
        ep = 1;
    struct model_plan_layout lay = trainer_plan_layout(t->cfg, t->lora.rank ? &t->lora : NULL, t->world, ep);
    lay.compute_bytes = sizeof(float); /* the CPU's bf16 mode keeps fp32 containers */
    struct model_plan plan;
    if (model_plan(&t->mc, &lay, &plan, err))
        return -1;
    double have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE), gib = 1 << 30;
    if (have > 0 && plan.total > have)
        return gale_fail(err, "%s: the run's memory plan needs %.4g GiB on each rank (%.4g GiB of weights, "
                              "gradients and moments, %.4g GiB of activations and scratch; gale plan %s shows it), "
                              "more than this machine's %.4g GiB of memory",
                         t->cfg->file, plan.total / gib,
                         (plan.bytes[PLAN_WEIGHTS] + plan.bytes[PLAN_MASTER] + plan.bytes[PLAN_GRADS] +
                          plan.bytes[PLAN_MOMENTS]) / gib,
                         (plan.bytes[PLAN_ACTIVATIONS] + plan.bytes[PLAN_SCRATCH]) / gib, t->cfg->file, have / gib);
    return 0;
}

static int setup(trainer *t, gale_error *err)
{
    const gale_run_config *c = t->cfg;
    comm_world_position(&t->rank, &t->world);
    if (t->rank == 0) {
        /* before anything reads or writes run.dir: a second job on it fails here at once */
        char *lock = gale_path_join(c->run.dir, RUN_LOCK_FILE);
        int rc = gale_mkdir_p(c->run.dir, err) || gale_lock_take(&t->run_lock, lock, "gale train", err) ? -1 : 0;
        free(lock);
        if (rc)
            return -1;
    }
    if (trainer_model_config(c, &t->mc, err) || trainer_lora_config(c, &t->lora, err) ||
        (c->backend.device != GALE_DEVICE_CUDA && check_host_memory(t, err)))
        return -1;
    adopt_data_tokenizer(t);
    /* before the first collective (comm_create's), which ranks that disagree could wait in for ever */
    if (t->world > 1 && run_agreement_check(c, &t->mc, err))
        return -1;
    char key[512];
    snprintf(key, sizeof key, "%s: parallel.ep", c->file);
    if (comm_create(&t->comm, (int)c->parallel.ep, t->mc.num_experts, key, err))
        return -1;
    t->comm_ready = 1;
    if (c->backend.threads > 0) {
        omp_set_num_threads((int)c->backend.threads);
    } else if (t->comm.local_size > 1) {
        /* ranks sharing a node share its cores rather than each taking all of them */
        int share = omp_get_num_procs() / t->comm.local_size;
        omp_set_num_threads(share > 1 ? share : 1);
    }
    int cuda = c->backend.device == GALE_DEVICE_CUDA;
    if (cuda && t->world > 1)
        return gale_fail(err, "backend.device: cuda trains on one GPU, one rank (got %d ranks): data "
                              "parallelism over GPUs is not built yet", t->world);
    t->be = gale_backend_create(cuda ? "cuda" : "cpu",
                                c->backend.precision == GALE_PRECISION_BF16 ? GALE_BF16 : GALE_F32, err);
    if (!t->be)
        return -1;
    struct model_options mo = {
        .aux_form = c->moe.aux_loss == GALE_AUX_PER_LAYER ? MODEL_AUX_PER_LAYER : MODEL_AUX_HF,
        .router_z_loss_coef = c->moe.z_loss,
        .recompute = c->backend.recompute == GALE_RECOMPUTE_LAYER ? MODEL_RECOMPUTE_LAYER : MODEL_RECOMPUTE_NONE,
        .capacity_factor = c->moe.capacity_factor,
        .lora = t->lora.rank ? &t->lora : NULL,
        .exchange = t->comm.ep_size > 1 ? &t->comm.exchange : NULL,
    };
    t->model = model_create(&t->mc, t->be, &mo, err);
    if (!t->model || open_data(t, err))
        return -1;
    const struct model_layout *layout = trained(t).layout;
    struct adamw_config ac = {c->optim.lr, c->optim.beta1, c->optim.beta2, c->optim.eps, c->optim.weight_decay};
    grad_sync_init(&t->sync, &t->comm, layout, c->optim.zero);
    t->sync_ready = 1;
    size_t(*pieces)[2];
    int n_pieces = grad_sync_pieces(&t->sync, &pieces);
    int rc = c->optim.zero ? adamw_init_ranges(&t->opt, &ac, t->be, (const size_t(*)[2])pieces, n_pieces, err)
                           : adamw_init(&t->opt, &ac, t->be, 0, layout->numel, err);
    free(pieces);
    if (rc)
        return -1;
    t->opt_ready = 1;

    t->tokens_per_step = c->data.micro_batch * c->data.grad_accum * t->world * c->data.seq_len;
    long steps = c->run.steps > 0 ? c->run.steps : (c->run.tokens + t->tokens_per_step - 1) / t->tokens_per_step;
    t->sched = (gale_schedule){c->optim.schedule, c->optim.lr, c->optim.min_lr, c->optim.warmup, steps,
                               c->optim.decay};
    if (schedule_validate(&t->sched, err)) {
        gale_error_prefix(err, "%s", c->file);
        return -1;
    }
    /* LoRA: the frozen base's weight gradients are not computed (the adapters' few are not counted) */
    t->flops_per_token = train_flops_per_token(&t->mc, model_get_layout(t->model), (int)c->data.seq_len,
                                               t->lora.rank > 0);
    t->peak_flops = c->backend.peak_tflops > 0 ? c->backend.peak_tflops * 1e12
                                               : ASSUMED_CORE_FLOPS * omp_get_max_threads() * t->world;
    if (t->mc.num_experts)
        t->expert_counts = gale_xcalloc((size_t)t->mc.num_layers * t->mc.num_experts, sizeof *t->expert_counts);
    if (start_state(t, err))
        return -1;
    if (t->rank == 0) {
        if (gale_mkdir_p(c->run.dir, err))
            return -1;
        t->metrics = metrics_open(c->run.dir, t->state.step, err);
        if (!t->metrics || !(t->tb = tb_open(c->run.dir, err)))
            return -1;
        print_effective_config(t);
    }
    /* checkpoints record this run's config and world, not those of the one resumed */
    json_decref(t->state.config);
    t->state.config = run_config_to_json(c);
    t->state.world_size = t->world;
    t->state.ep_size = t->comm.ep_size;
    return 0;
}

static void teardown(trainer *t)
{
    if (t->metrics)
        fclose(t->metrics);
    tb_close(t->tb);
    if (t->opt_ready)
        adamw_free(&t->opt);
    if (t->sync_ready)
        grad_sync_free(&t->sync);
    model_free(t->model);
    gale_backend_free(t->be);
    loader_close(t->loader);
    if (t->comm_ready)
        comm_free(&t->comm);
    for (long i = 0; t->micro && i < t->cfg->data.grad_accum; i++)
        batch_free(&t->micro[i]);
    free(t->micro);
    free(t->segments);
    free(t->dirs);
    free(t->weights);
    free(t->tokenizer_path);
    free(t->chat_template);
    free(t->expert_counts);
    train_state_clear(&t->state);
    gale_lock_release(&t->run_lock);
}

/* Appends "TENSOR (n of m values), ..." for the tensors of values (a host copy of a flat
 * buffer) holding NaN or inf, last tensor first: backward order, so for gradients the first
 * named is nearest the loss. Returns how many tensors are non-finite. */
static int name_nonfinite(const struct model_layout *layout, const float *values, char *buf, size_t size)
{
    size_t used = strlen(buf);
    int total = 0;
    for (int i = layout->n - 1; i >= 0; i--) {
        const struct model_tensor *ten = &layout->tensors[i];
        size_t bad = 0;
        for (size_t j = 0; j < ten->numel; j++)
            bad += !isfinite(values[ten->offset + j]);
        if (!bad)
            continue;
        if (total++ < MAX_NAMED_TENSORS && used < size)
            used += snprintf(buf + used, size - used, "%s%s (%zu of %zu values)", total > 1 ? ", " : "", ten->name,
                             bad, ten->numel);
    }
    if (total > MAX_NAMED_TENSORS && used < size)
        snprintf(buf + used, size - used, " and %d more", total - MAX_NAMED_TENSORS);
    return total;
}

/* What a non-finite step reports: the non-finite weights (a cause) and gradients of this
 * rank's tensors. Returns how many weight tensors are non-finite. */
static int diagnose_nonfinite(trainer *t, char *buf, size_t size)
{
    struct model_trainable tr = trained(t);
    const struct model_layout *layout = tr.layout;
    float *host = gale_xmalloc(layout->numel * sizeof *host);
    size_t used;
    snprintf(buf, size, "non-finite weights: ");
    t->be->ops->download(t->be, host, tr.params, layout->numel * sizeof *host);
    gale_backend_wait(t->be);
    int bad_weights = name_nonfinite(layout, host, buf, size);
    if (!bad_weights)
        snprintf(buf + strlen(buf), size - strlen(buf), "none");
    used = strlen(buf);
    snprintf(buf + used, size - used, "; non-finite gradients (backward order): ");
    t->be->ops->download(t->be, host, tr.grads, layout->numel * sizeof *host);
    gale_backend_wait(t->be);
    if (!name_nonfinite(layout, host, buf, size))
        snprintf(buf + strlen(buf), size - strlen(buf), "none: the loss itself is");
    free(host);
    return bad_weights;
}

static void on_grads_ready(void *ctx, int first, int end)
{
    grad_sync_ready(ctx, first, end);
}

/* Micro-batch i of the step for the model, its dropout masks drawn (a function of the seed, the
 * step, the micro-batch and the rank). */
static void micro_batch_of_step(trainer *t, long i, struct model_batch *mb)
{
    const gale_run_config *c = t->cfg;
    eval_model_batch(&t->micro[i], c->data.doc_mask, t->segments, mb);
    model_lora_dropout_seed(t->model, gale_rng_bits(gale_rng_stream(c->run.seed, "lora.dropout"),
                                                    ((uint64_t)t->state.step * c->data.grad_accum + i) * t->world +
                                                        t->rank));
}

/* moe.aux_scope global: a forward of every micro-batch up to the routing, the expert counts
 * summed over them and over every rank of the world (each rank trains on its own tokens, EP
 * ranks included), given to the model for the step's training passes (model_route). */
static int route_global_batch(trainer *t, gale_error *err)
{
    model_stats_reset(t->model);
    for (long i = 0; i < t->cfg->data.grad_accum; i++) {
        struct model_batch mb;
        micro_batch_of_step(t, i, &mb);
        if (model_route(t->model, &mb, err)) {
            gale_error_prefix(err, "step %ld, routing micro-batch %ld", t->state.step + 1, i);
            return -1;
        }
    }
    struct model_stats st;
    if (model_stats_read(t->model, &st, err))
        return -1;
    int le = t->mc.num_layers * t->mc.num_experts;
    memcpy(t->expert_counts, st.expert_load, (size_t)le * sizeof *t->expert_counts);
    comm_sum_int64(&t->comm, COMM_WORLD_GROUP, t->expert_counts, le);
    model_set_aux_counts(t->model, t->expert_counts, (double)t->tokens_per_step);
    return 0;
}

/* One optimizer step over grad_accum micro-batches on every rank. */
static int train_step(trainer *t, step_result *r, gale_error *err)
{
    const gale_run_config *c = t->cfg;
    long accum = c->data.grad_accum;
    double local_targets = 0;
    for (long i = 0; i < accum; i++) {
        if (loader_next(t->loader, &t->micro[i], err) < 0)
            return -1;
        local_targets += (double)t->micro[i].n_targets;
    }
    /* the denominator of the step's loss: every target of the global batch */
    double n_targets = local_targets;
    comm_sum_doubles(&t->comm, COMM_WORLD_GROUP, &n_targets, 1);
    double denominator = n_targets > 0 ? n_targets : 1;
    double aux_weight = 1.0 / ((double)accum * t->world);

    comm_bytes_reset(&t->comm);
    if (c->moe.aux_scope == GALE_AUX_GLOBAL && t->mc.num_experts && route_global_batch(t, err))
        return -1;
    model_zero_grads(t->model);
    model_stats_reset(t->model);
    struct model_trainable tr = trained(t);
    const struct model_layout *layout = tr.layout;
    float *grads = tr.grads;
    grad_sync_begin(&t->sync, grads);
    for (long i = 0; i < accum; i++) {
        struct model_batch mb;
        micro_batch_of_step(t, i, &mb);
        /* the last micro-batch's backward starts each bucket's reduction as it finishes it */
        int overlap = i == accum - 1 && c->parallel.overlap && t->world > 1;
        model_set_grads_ready(t->model, overlap ? on_grads_ready : NULL, &t->sync);
        if (model_forward_backward(t->model, &mb, denominator, aux_weight, NULL, err)) {
            gale_error_prefix(err, "step %ld, micro-batch %ld", t->state.step + 1, i);
            return -1;
        }
    }
    model_set_grads_ready(t->model, NULL, NULL);
    /* the step's statistics come back once, after its micro-batches */
    struct model_stats st;
    if (model_stats_read(t->model, &st, err)) {
        gale_error_prefix(err, "step %ld", t->state.step + 1);
        return -1;
    }
    double z_sum = c->moe.z_loss != 0 ? st.z_sum : 0;
    double sums[4] = {st.ce_sum, /* ce_sum, router part of the loss, aux, z (weighted) */
                      (t->mc.router_aux_loss_coef * st.aux_sum + c->moe.z_loss * z_sum) * aux_weight,
                      st.aux_sum * aux_weight, z_sum * aux_weight};
    if (t->expert_counts)
        memcpy(t->expert_counts, st.expert_load,
               (size_t)t->mc.num_layers * t->mc.num_experts * sizeof *t->expert_counts);
    r->dropped = st.dropped;
    /* each rank's gradients are already divided by the global target count: sum them (the
     * buckets not started during the backward start here) */
    grad_sync_finish(&t->sync);
    if (t->world > 1) {
        comm_sum_doubles(&t->comm, COMM_WORLD_GROUP, sums, 4);
        if (t->expert_counts)
            comm_sum_int64(&t->comm, COMM_WORLD_GROUP, t->expert_counts, t->mc.num_layers * t->mc.num_experts);
        if (c->moe.capacity_factor > 0)
            comm_sum_int64(&t->comm, COMM_WORLD_GROUP, &r->dropped, 1);
    }
    r->ce_loss = sums[0] / denominator;
    r->loss = r->ce_loss + sums[1];
    r->aux_loss = sums[2];
    r->z_loss = sums[3];
    r->n_targets = (int64_t)n_targets;
    r->lr = schedule_lr(&t->sched, t->state.step);
    r->skipped = 0;
    /* the clip factor goes from the norm to the update on the device; the norm comes back
     * after. A world of ranks first sums its pieces' squares (grad_sync_sumsq: the one host
     * value the update waits for there, as MPI sums host memory). */
    int world = t->world > 1, rc = 0;
    double world_sumsq = 0;
    if (world)
        rc = grad_sync_sumsq(&t->sync, &t->opt, &world_sumsq, err);
    if (rc == 0 && isfinite(r->loss)) {
        if (world)
            adamw_step_summed(&t->opt, layout, tr.params, tr.weights, grads, r->lr, c->optim.clip, world_sumsq);
        else
            adamw_step(&t->opt, layout, tr.params, tr.weights, grads, r->lr, c->optim.clip);
        rc = adamw_step_norm(&t->opt, &r->grad_norm, err);
    } else if (rc == 0) {
        if (world)
            r->grad_norm = sqrt(world_sumsq);
        else
            rc = adamw_grad_norm(&t->opt, grads, layout->numel, &r->grad_norm, err);
    }
    if (rc) {
        gale_error_prefix(err, "step %ld", t->state.step + 1);
        return -1;
    }
    if (!isfinite(r->loss) || !isfinite(r->grad_norm)) {
        /* no update was made: a non-finite norm made the device skip it */
        char why[1536];
        int bad_weights = diagnose_nonfinite(t, why, sizeof why);
        if (c->run.nan_policy == GALE_NAN_STOP) {
            gale_fail(err, "step %ld: non-finite loss %g / gradient norm %g; %s "
                           "(run.nan_policy: skip would skip such steps)",
                      t->state.step + 1, r->loss, r->grad_norm, why);
            /* every rank sees the summed loss: all stop here, with the report of the first
             * rank holding non-finite weights (an expert-parallel rank's own experts) */
            comm_agree(&t->comm, bad_weights > 0, err);
            return -1;
        }
        if (t->rank == 0)
            printf("step %ld: non-finite loss %g / gradient norm %g, skipped; %s\n", t->state.step + 1, r->loss,
                   r->grad_norm, why);
        r->skipped = 1;
    } else if (c->optim.zero && t->world > 1) {
        grad_sync_gather_params(&t->sync, tr.params);
        model_weights_refresh(t->model);
    }
    t->state.step++;
    t->state.optimizer_step = t->opt.step;
    t->state.tokens_seen += r->n_targets;
    return 0;
}

/* JSON has no NaN or inf: a non-finite number is recorded as null. */
static json_t *number_or_null(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

static void report_step(trainer *t, const step_result *r, double step_seconds, double eta_seconds, gale_error *err)
{
    double tok_per_s = t->tokens_per_step / step_seconds;
    double mfu = t->flops_per_token * tok_per_s / t->peak_flops;
    char eta[32];
    format_duration(eta_seconds, eta, sizeof eta);
    if (t->state.step % t->cfg->run.log_every == 0 || t->state.step == t->sched.total) {
        printf("step %6ld/%ld | loss %.4f", t->state.step, t->sched.total, r->loss);
        if (t->mc.num_experts)
            printf(" (ce %.4f, aux %.4f)", r->ce_loss, r->aux_loss);
        if (t->mc.num_experts && t->cfg->moe.capacity_factor > 0)
            printf(" | dropped %lld", (long long)r->dropped);
        printf(" | lr %.3e | grad norm %.3f | %.0f tok/s | MFU %.1f%% | %.2f s/step | ETA %s%s\n", r->lr, r->grad_norm,
               tok_per_s, 100 * mfu, step_seconds, eta, r->skipped ? " | SKIPPED" : "");
        fflush(stdout);
    }
    /* the peak so far: a step's, as the final checkpoint's host staging comes after the last one */
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    json_t *rec = json_pack("{s:s, s:I, s:o, s:o, s:o, s:o, s:f, s:o, s:I, s:I, s:f, s:f, s:f, s:b, s:f}", "kind", "train",
                            "step", (json_int_t)t->state.step, "loss", number_or_null(r->loss), "ce_loss",
                            number_or_null(r->ce_loss), "aux_loss", number_or_null(r->aux_loss), "z_loss",
                            number_or_null(r->z_loss), "lr", r->lr, "grad_norm", number_or_null(r->grad_norm),
                            "targets", (json_int_t)r->n_targets, "tokens_seen", (json_int_t)t->state.tokens_seen,
                            "tokens_per_s", tok_per_s, "mfu", mfu, "step_s", step_seconds, "skipped", r->skipped,
                            "peak_rss_mib", usage.ru_maxrss / 1024.0);
    /* the bytes rank 0 sent in the step's collectives (each rank's all-to-all differs) */
    json_t *bytes = json_object();
    for (int k = 0; k < COMM_KINDS; k++)
        json_object_set_new(bytes, comm_kind_name(k), json_integer((json_int_t)t->comm.bytes[k]));
    json_object_set_new(rec, "comm_bytes", bytes);
    json_t *seconds = json_object();
    for (int k = 0; k < COMM_KINDS; k++)
        json_object_set_new(seconds, comm_kind_name(k), json_real(t->comm.seconds[k]));
    json_object_set_new(rec, "comm_s", seconds);
    if (t->world > 1 && t->state.step == 1) {
        printf("communication of step 1 from rank 0:");
        for (int k = 0; k < COMM_KINDS; k++)
            printf(" %s %.3f MB%s", comm_kind_name(k), t->comm.bytes[k] / 1e6, k + 1 < COMM_KINDS ? "," : "\n");
        fflush(stdout);
    }
    if (t->expert_counts) {
        json_t *layers = json_array();
        for (int l = 0; l < t->mc.num_layers; l++) {
            gale_expert_load load;
            expert_load_summarise(t->expert_counts + (size_t)l * t->mc.num_experts, t->mc.num_experts, &load);
            json_array_append_new(layers, json_pack("{s:i, s:f, s:f, s:f}", "layer", l, "min", load.min, "max",
                                                    load.max, "cv", load.cv));
        }
        json_object_set_new(rec, "experts", layers);
        /* routing slots (token, expert) over the step's layers, micro-batches and ranks */
        json_object_set_new(rec, "dropped", json_integer((json_int_t)r->dropped));
    }
    if (metrics_append(t->metrics, rec, err) || tb_write_record(t->tb, rec, err))
        fprintf(stderr, "gale train: warning: %s\n", err->msg);
    json_decref(rec);
}

static int run_eval(trainer *t, gale_error *err)
{
    gale_eval_options eo = {
        .dirs = t->dirs,
        .n_dirs = t->cfg->data.n_sources,
        .split = "val",
        .batch_rows = (int)t->cfg->data.micro_batch,
        .max_batches = t->cfg->run.eval_batches,
        .doc_mask = t->cfg->data.doc_mask,
        .rank = t->rank,
        .world = t->world,
        .skip_bad_shards = t->cfg->data.on_bad_shard,
    };
    gale_eval_result res;
    if (eval_split(t->model, &eo, &res, err))
        return -1;
    if (t->rank == 0) {
        printf("eval step %ld | val loss %.4f | ppl %.2f | %lld tokens\n", t->state.step, res.loss, res.ppl,
               (long long)res.n_targets);
        fflush(stdout);
        json_t *rec = json_pack("{s:s, s:I, s:f, s:f, s:I}", "kind", "eval", "step", (json_int_t)t->state.step,
                                "val_loss", res.loss, "val_ppl", res.ppl, "val_targets", (json_int_t)res.n_targets);
        int rc = metrics_append(t->metrics, rec, err) || tb_write_record(t->tb, rec, err) ? -1 : 0;
        json_decref(rec);
        return rc;
    }
    return 0;
}

/* What this rank writes of a checkpoint. Each tensor is written once: by the expert-parallel
 * rank holding it (a dense one by EP rank 0), and of the data-parallel ranks holding copies by
 * DP rank 0, or under ZeRO-1 by DP rank d for the tensors of its part of the flat buffer (about
 * 1/dp of it, whole gradient buckets), the pieces of their moments coming to it from the
 * bucket's group (grad_sync_collect_part). Nothing goes to rank 0. */
struct own_part {
    int *tensors, *file_of, n, files;
    float *m, *v;  /* the moments of [begin, end) of the trained layout */
    size_t begin, end;
};

static void own_part_free(struct own_part *p)
{
    free(p->tensors);
    free(p->file_of);
    free(p->m);
    free(p->v);
}

static void own_part(trainer *t, const struct model_save_options *save, struct own_part *p)
{
    const struct model_layout *layout = trained(t).layout;
    int dp = t->comm.dp_size, me = t->comm.dp_rank, zero = t->cfg->optim.zero && t->world > 1;
    size_t *want = gale_xcalloc((size_t)dp + 1, sizeof *want);
    if (zero) /* the DP ranks write a part each */
        grad_sync_parts(&t->sync, want);
    for (int d = zero ? dp : 1; d <= dp; d++) /* else DP rank 0 all */
        want[d] = layout->numel;
    memset(p, 0, sizeof *p);
    p->begin = want[me];
    p->end = want[me + 1];
    p->tensors = gale_xcalloc((size_t)layout->n, sizeof *p->tensors);
    p->file_of = gale_xcalloc((size_t)layout->n, sizeof *p->file_of);
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *ten = &layout->tensors[i];
        if (ten->offset >= p->begin && ten->offset < p->end && (ten->expert || t->comm.ep_rank == 0))
            p->tensors[p->n++] = i;
    }
    p->files = model_shard_plan(layout, p->tensors, p->n, save, p->file_of);
    size_t n = p->end - p->begin, own = t->opt.numel;
    p->m = gale_xmalloc((n ? n : 1) * sizeof *p->m);
    p->v = gale_xmalloc((n ? n : 1) * sizeof *p->v);
    if (zero) { /* every bucket's pieces to the rank writing it */
        float *m = gale_xmalloc((own ? own : 1) * sizeof *m), *v = gale_xmalloc((own ? own : 1) * sizeof *v);
        t->be->ops->download(t->be, m, t->opt.m, own * sizeof *m);
        t->be->ops->download(t->be, v, t->opt.v, own * sizeof *v);
        gale_backend_wait(t->be);
        grad_sync_collect_part(&t->sync, want, m, v, p->m, p->v);
        free(m);
        free(v);
    } else { /* the moments cover the whole layout */
        t->be->ops->download(t->be, p->m, t->opt.m + p->begin, n * sizeof(float));
        t->be->ops->download(t->be, p->v, t->opt.v + p->begin, n * sizeof(float));
        gale_backend_wait(t->be);
    }
    free(want);
}

/* The expert-parallel rank holding an expert's tensor: each holds a contiguous block. */
static int expert_owner(const trainer *t, const char *name)
{
    const char *at = strstr(name, ".experts.");
    return at ? atoi(at + strlen(".experts.")) / (t->mc.num_experts / t->comm.ep_size) : 0;
}

/* PEFT's one adapter file holds every expert's adapters, but under expert parallelism a rank
 * holds its experts' only: the other EP ranks of data-parallel replica 0 send theirs to rank 0
 * (adapters are small; their moments go per rank, own_part's), whose *all then holds every
 * adapter over lora_layout_whole's layout (caller frees; rank 0 stages twice the adapters'
 * size meanwhile). *all stays NULL on the other ranks and without expert parallelism, where
 * the model holds every adapter. */
static int gather_adapters(trainer *t, float **all, gale_error *err)
{
    *all = NULL;
    if (!model_lora_config(t->model) || t->comm.ep_size == 1 || t->comm.dp_rank != 0)
        return 0;  /* the other replicas hold copies */
    struct model_layout whole;
    if (lora_layout_whole(&t->mc, &t->lora, &whole, err))
        return -1;
    const struct model_layout *own = trained(t).layout;
    float *mine = gale_xmalloc(own->numel * sizeof *mine), *experts = NULL;
    model_lora_download(t->model, mine);
    size_t n = 0;
    if (t->rank != 0) { /* its experts' adapters, in layout order */
        experts = gale_xmalloc(own->numel * sizeof *experts);
        for (int i = 0; i < own->n; i++)
            if (own->tensors[i].expert) {
                memcpy(experts + n, mine + own->tensors[i].offset, own->tensors[i].numel * sizeof *experts);
                n += own->tensors[i].numel;
            }
    }
    int p = t->comm.ep_size;
    size_t *counts = gale_xcalloc((size_t)p, sizeof *counts), *at = gale_xcalloc((size_t)p, sizeof *at), total = 0;
    for (int i = 0; i < whole.n; i++) { /* what rank 0 receives: the others' experts */
        int r = whole.tensors[i].expert ? expert_owner(t, whole.tensors[i].name) : 0;
        counts[r] += r ? whole.tensors[i].numel : 0;
        total += r ? whole.tensors[i].numel : 0;
    }
    float *gathered = t->rank == 0 ? gale_xmalloc((total ? total : 1) * sizeof *gathered) : NULL;
    comm_gather_floats(&t->comm, COMM_EP_GROUP, experts, n, gathered, counts, 0);
    if (t->rank == 0) {
        *all = gale_xmalloc(whole.numel * sizeof **all);
        for (int r = 1; r < p; r++)
            at[r] = at[r - 1] + counts[r - 1];
        for (int i = 0; i < whole.n; i++) {
            const struct model_tensor *w = &whole.tensors[i], *o = model_layout_find(own, w->name);
            int r = o ? 0 : expert_owner(t, w->name);
            memcpy(*all + w->offset, o ? mine + o->offset : gathered + at[r], w->numel * sizeof **all);
            at[r] += o ? 0 : w->numel;
        }
    }
    free(gathered);
    free(counts);
    free(at);
    free(experts);
    free(mine);
    model_layout_free(&whole);
    return 0;
}

/* checkpoint.dtype, where auto keeps a bf16 model.from in bf16 (bf16 in, bf16 out) and saves a
 * model trained from scratch (or from f32 or f16 weights) in f32 */
static struct model_save_options checkpoint_options(const trainer *t)
{
    const gale_run_config *c = t->cfg;
    int bf16 = c->checkpoint.dtype == GALE_CKPT_BF16 ||
               (c->checkpoint.dtype == GALE_CKPT_AUTO && c->model.from && t->mc.dtype == MODEL_DTYPE_BF16);
    return (struct model_save_options){bf16 ? MODEL_DTYPE_BF16 : MODEL_DTYPE_F32, (uint64_t)c->checkpoint.shard_size};
}

/* Every rank writes its part into the step's temporary folder (checkpoint.h), then rank 0
 * publishes it; a rank that fails stops every rank with its message. */
static int save_checkpoint(trainer *t, gale_error *err)
{
    const gale_run_config *c = t->cfg;
    struct model_save_options save = checkpoint_options(t);
    int rc = t->rank == 0 ? checkpoint_begin(c->run.dir, t->state.step, err) : 0;
    if (comm_agree(&t->comm, rc, err) >= 0)
        return -1;
    float *adapters;
    rc = gather_adapters(t, &adapters, err);
    if (comm_agree(&t->comm, rc, err) >= 0)
        return -1;
    struct own_part p;
    own_part(t, &save, &p);
    uint64_t *files = gale_xcalloc((size_t)t->world, sizeof *files);
    comm_allgather_u64(&t->comm, COMM_WORLD_GROUP, (uint64_t)p.files, files);
    int first = 0, total = 0;
    for (int r = 0; r < t->world; r++) {
        first += r < t->rank ? (int)files[r] : 0;
        total += (int)files[r];
    }
    free(files);
    struct checkpoint_part part = {p.tensors, p.n, p.file_of, first, total, p.m, p.v, p.begin,
                                   !model_lora_config(t->model)};
    char *tmp = checkpoint_tmp_dir(c->run.dir, t->state.step);
    rc = checkpoint_write_part(tmp, t->model, &part, &save, err);
    free(tmp);
    own_part_free(&p);
    if (comm_agree(&t->comm, rc, err) >= 0) {
        free(adapters);
        return -1;
    }
    if (t->rank == 0) {
        gale_loader_position pos;
        loader_position(t->loader, &pos);
        json_decref(t->state.loader);
        t->state.loader = loader_position_to_json(&pos);
        char *dir = NULL;
        gale_hf_files hf = {t->tokenizer_path, t->chat_template, c->model.from};
        rc = checkpoint_finish(c->run.dir, t->model, &t->state, &hf, (int)c->run.keep_last, &save, total, adapters, &dir,
                               err);
        if (rc == 0)
            printf("checkpoint %s\n", dir);
        fflush(stdout);
        free(dir);
    }
    free(adapters);
    return comm_agree(&t->comm, rc, err) >= 0 ? -1 : 0;
}

static int train_loop(trainer *t, const gale_train_options *opts, gale_error *err)
{
    const gale_run_config *c = t->cfg;
    long first = t->state.step;
    /* the baseline: the validation loss before any training (a resumed run has it already) */
    if (t->eval_on && first == 0 && run_eval(t, err))
        return -1;
    double started = now_seconds();
    while (t->state.step < t->sched.total) {
        if (opts->stop_at > 0 && t->state.step >= opts->stop_at) {
            if (t->rank == 0)
                printf("stopped after step %ld (--stop-at %ld)\n", t->state.step, opts->stop_at);
            return 0;
        }
        double t0 = now_seconds();
        step_result r;
        if (train_step(t, &r, err))
            return -1;
        double t1 = now_seconds();
        long done = t->state.step - first;
        if (t->rank == 0)
            report_step(t, &r, t1 - t0, (t1 - started) / done * (t->sched.total - t->state.step), err);
        long step = t->state.step;
        int last = step == t->sched.total;
        if (t->eval_on && (step % c->run.eval_every == 0 || last) && run_eval(t, err))
            return -1;
        /* agree on a stop: a signal may reach one rank only */
        int stop = comm_max_int(&t->comm, COMM_WORLD_GROUP, stop_signal);
        int stop_here = opts->stop_at > 0 && step >= opts->stop_at;
        int periodic = c->run.checkpoint_every > 0 && step % c->run.checkpoint_every == 0;
        if ((periodic || last || stop || stop_here) && save_checkpoint(t, err))
            return -1;
        if (stop) {
            if (t->rank == 0)
                printf("stopped after step %ld (%s)\n", step, stop == SIGINT ? "SIGINT" : "SIGTERM");
            return 0;
        }
    }
    if (t->rank == 0 && first == t->sched.total)
        printf("the run is complete: %ld of %ld steps\n", t->state.step, t->sched.total);
    return 0;
}

int trainer_run(const gale_run_config *cfg, const gale_train_options *opts, gale_error *err)
{
    trainer t = {.cfg = cfg};
    /* SA_RESTART: a signal must not make a read or an fsync of the step fail */
    struct sigaction sa = {.sa_handler = on_stop_signal, .sa_flags = SA_RESTART}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    stop_signal = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    int rc = setup(&t, err);
    if (rc == 0)
        rc = train_loop(&t, opts, err);
    teardown(&t);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return rc;
}
