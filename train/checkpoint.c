/* checkpoint: step_XXXXXXXX.tmp/ → fsync → rename → `latest`, and back. */
#define _GNU_SOURCE
#include "train/checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/tokenizer.h"
#include "model/lora_io.h"
#include "model/safetensors.h"
#include "util/file.h"

#define STEP_NAME_DIGITS 8

void train_state_clear(gale_train_state *st)
{
    json_decref(st->loader);
    json_decref(st->config);
    memset(st, 0, sizeof *st);
}

static void step_name(long step, char name[32])
{
    snprintf(name, 32, "step_%0*ld", STEP_NAME_DIGITS, step);
}

/* 1 when name is step_ followed by exactly the digits of a step. */
static int is_step_name(const char *name)
{
    if (strncmp(name, "step_", 5))
        return 0;
    size_t n = strlen(name + 5);
    if (n < STEP_NAME_DIGITS)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (name[5 + i] < '0' || name[5 + i] > '9')
            return 0;
    return 1;
}

/* The moments of the part's tensors in the weights' files' grouping: optimizer-N holds the
 * moments of model-N's tensors. */
static int write_optimizer(const char *dir, const struct model_layout *layout, const struct checkpoint_part *part,
                           gale_error *err)
{
    struct safetensors_entry *entries = gale_xcalloc(2 * (size_t)part->n + 1, sizeof *entries);
    char **names = gale_xcalloc(2 * (size_t)part->n + 1, sizeof *names);
    for (int k = 0; k < part->n; k++) {
        const struct model_tensor *t = &layout->tensors[part->tensors[k]];
        for (int which = 0; which < 2; which++) {
            size_t len = strlen(t->name) + 16;
            char *name = names[2 * k + which] = gale_xmalloc(len);
            snprintf(name, len, "%s.%s", which ? "exp_avg_sq" : "exp_avg", t->name);
            entries[2 * k + which] = (struct safetensors_entry){
                name, ST_F32, t->ndim, t->shape, (which ? part->v : part->m) + (t->offset - part->base)};
        }
    }
    int rc = 0;
    for (int k = 0; k < part->n && rc == 0;) {
        int count = 0;
        while (k + count < part->n && part->file_of[k + count] == part->file_of[k])
            count++;
        char file[256];
        safetensors_shard_name(file, sizeof file, "optimizer", part->first_file + part->file_of[k], part->total_files);
        char *path = gale_path_join(dir, file);
        rc = safetensors_write(path, entries + 2 * k, 2 * count, NULL, 0, err);
        free(path);
        k += count;
    }
    for (int k = 0; k < 2 * part->n; k++)
        free(names[k]);
    free(names);
    free(entries);
    return rc;
}

static int write_state(const char *path, const gale_train_state *st, const struct model *m, gale_error *err)
{
    json_t *j = json_pack("{s:s, s:i, s:I, s:I, s:I, s:{s:I}, s:O?, s:{s:i, s:i, s:i}, s:I, s:O?}", "format",
                          GALE_TRAINER_STATE_FORMAT, "version", GALE_TRAINER_STATE_VERSION, "step",
                          (json_int_t)st->step, "optimizer_step", (json_int_t)st->optimizer_step, "tokens_seen", (json_int_t)st->tokens_seen, "rng", "seed",
                          (json_int_t)st->seed, "loader", st->loader, "world", "size", st->world_size,
                          "data_parallel", st->world_size / (st->ep_size > 0 ? st->ep_size : 1), "expert_parallel",
                          st->ep_size > 0 ? st->ep_size : 1, "params",
                          (json_int_t)model_get_layout(m)->numel, "config", st->config);
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    int rc = gale_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

/* Older step first: names are equal width up to 10^8 steps, longer ones are later. */
static int compare_step_names(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    size_t lx = strlen(x), ly = strlen(y);
    return lx != ly ? (lx < ly ? -1 : 1) : strcmp(x, y);
}

/* 1 for what an interrupted save or prune leaves: a step_N.tmp or step_N.deleting folder, or
 * latest.tmp.PID of a process that is gone (gale_write_file_atomic's temporary). */
static int is_leftover(const char *name)
{
    size_t len = strlen(name);
    if (!strncmp(name, "step_", 5))
        return (len > 4 && !strcmp(name + len - 4, ".tmp")) || (len > 9 && !strcmp(name + len - 9, ".deleting"));
    char *end;
    if (strncmp(name, "latest.tmp.", 11) || !name[11])
        return 0;
    long pid = strtol(name + 11, &end, 10);
    return !*end && pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Removes leftovers and the oldest complete checkpoints beyond keep_last. An old checkpoint is
 * first renamed to step_N.deleting, so a prune killed half-way never leaves a partial folder
 * under a checkpoint's name. */
static int prune(const char *ckpt_root, int keep_last, gale_error *err)
{
    DIR *d = opendir(ckpt_root);
    if (!d)
        return gale_fail_errno(err, "%s", ckpt_root);
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (is_leftover(e->d_name)) {
            char *stale = gale_path_join(ckpt_root, e->d_name);
            rc |= gale_remove_tree(stale, err);
            free(stale);
        } else if (is_step_name(e->d_name)) {
            names = gale_xrealloc(names, (n + 1) * sizeof *names);
            names[n++] = gale_xstrdup(e->d_name);
        }
    }
    closedir(d);
    qsort(names, n, sizeof *names, compare_step_names);
    for (size_t i = 0; i < n; i++) {
        if (i + keep_last < n) {
            char *old = gale_path_join(ckpt_root, names[i]);
            char *doomed = gale_xmalloc(strlen(old) + 16);
            sprintf(doomed, "%s.deleting", old);
            if (gale_rename_durable(old, doomed, err) == 0)
                rc |= gale_remove_tree(doomed, err);
            else
                rc = -1;
            free(doomed);
            free(old);
        }
        free(names[i]);
    }
    free(names);
    return rc ? -1 : 0;
}

/* Renames the finished tmp folder to final. A final folder of that step already there
 * (a run resumed from an older checkpoint, reaching it again) is swapped out atomically
 * and removed: `latest` never names a missing or partial folder. */
static int publish(const char *root, const char *tmp, const char *final, gale_error *err)
{
    if (!gale_path_exists(final))
        return gale_rename_durable(tmp, final, err);
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) != 0)
        return gale_fail_errno(err, "replacing %s by %s", final, tmp);
    if (gale_fsync_path(root, err))
        return -1;
    return gale_remove_tree(tmp, err); /* now the replaced checkpoint */
}

/* The model's, or with LoRA the adapters' layout: what the moments cover. */
static const struct model_layout *trained_layout(struct model *m)
{
    struct model_trainable tr;
    model_trainable(m, &tr);
    return tr.layout;
}

char *checkpoint_tmp_dir(const char *run_dir, long step)
{
    char name[40];
    step_name(step, name);
    strcat(name, ".tmp");
    char *root = gale_path_join(run_dir, "checkpoints"), *tmp = gale_path_join(root, name);
    free(root);
    return tmp;
}

int checkpoint_begin(const char *run_dir, long step, gale_error *err)
{
    char *tmp = checkpoint_tmp_dir(run_dir, step);
    int rc = (gale_path_exists(tmp) && gale_remove_tree(tmp, err)) || gale_mkdir_p(tmp, err) ? -1 : 0;
    if (rc)
        gale_error_prefix(err, "checkpoint of step %ld", step);
    free(tmp);
    return rc;
}

int checkpoint_write_part(const char *tmp_dir, struct model *m, const struct checkpoint_part *part,
                          const struct model_save_options *save, gale_error *err)
{
    int rc = 0;
    if (part->weights) {
        rc = model_save_part(m, tmp_dir, "model", part->tensors, part->n, part->file_of, save->dtype, part->first_file,
                             part->total_files, err);
        if (rc == 0 && save->dtype != MODEL_DTYPE_F32)
            rc = model_save_part(m, tmp_dir, "master", part->tensors, part->n, part->file_of, MODEL_DTYPE_F32,
                                 part->first_file, part->total_files, err);
    }
    if (rc == 0)
        rc = write_optimizer(tmp_dir, trained_layout(m), part, err);
    if (rc)
        gale_error_prefix(err, "checkpoint part in %s", tmp_dir);
    return rc;
}

/* The indexes of a folder whose files several ranks wrote, and config.json; or with LoRA the
 * adapters in PEFT's format (naming the run's model.from as their base): the model's, or under
 * expert parallelism adapters, every expert's gathered. */
static int finish_weights(struct model *m, const gale_train_state *st, const struct model_save_options *save,
                          int total_files, const float *adapters, const char *dir, gale_error *err)
{
    if (total_files > 1 && safetensors_write_index(dir, "optimizer", total_files, err))
        return -1;
    const struct lora_config *lc = model_lora_config(m);
    if (lc) {
        const char *from = json_string_value(json_object_get(json_object_get(st->config, "model"), "from"));
        if (!adapters)
            return model_lora_save(m, lc, from, dir, err);
        struct model_layout whole;
        int rc = lora_layout_whole(model_get_config(m), lc, &whole, err) ||
                         lora_adapters_write(dir, lc, from, &whole, adapters, err)
                     ? -1
                     : 0;
        model_layout_free(&whole);
        return rc;
    }
    if (total_files > 1 && (safetensors_write_index(dir, "model", total_files, err) ||
                            (save->dtype != MODEL_DTYPE_F32 && safetensors_write_index(dir, "master", total_files, err))))
        return -1;
    return model_save_config(m, dir, save->dtype, err);
}

int checkpoint_finish(const char *run_dir, struct model *m, const gale_train_state *st, const gale_hf_files *hf,
                      int keep_last, const struct model_save_options *save, int total_files, const float *adapters,
                      char **out_dir, gale_error *err)
{
    char name[32];
    step_name(st->step, name);
    char *root = gale_path_join(run_dir, "checkpoints");
    char *final = gale_path_join(root, name), *tmp = checkpoint_tmp_dir(run_dir, st->step);
    char *state = gale_path_join(tmp, "trainer_state.json"), *latest = gale_path_join(root, "latest");
    int rc = -1;
    if (finish_weights(m, st, save, total_files, adapters, tmp, err) || hf_files_write(tmp, hf, err))
        goto done;
    if (write_state(state, st, m, err) || gale_fsync_path(tmp, err) || publish(root, tmp, final, err))
        goto done;
    rc = 0;
    char line[40];
    snprintf(line, sizeof line, "%s\n", name);
    if (gale_write_file_atomic(latest, line, strlen(line), err) || prune(root, keep_last, err))
        rc = -1;
done:
    if (rc)
        gale_error_prefix(err, "checkpoint of step %ld in %s", st->step, root);
    if (rc == 0 && out_dir)
        *out_dir = gale_xstrdup(final);
    free(latest);
    free(state);
    free(root);
    free(final);
    free(tmp);
    return rc;
}

char *checkpoint_latest(const char *run_dir, gale_error *err)
{
    err->msg[0] = 0;
    char *root = gale_path_join(run_dir, "checkpoints");
    char *latest = gale_path_join(root, "latest");
    char *result = NULL;
    if (!gale_path_exists(latest))
        goto done;
    size_t len;
    char *text = gale_read_file(latest, &len, err);
    if (!text)
        goto done;
    while (len && (text[len - 1] == '\n' || text[len - 1] == ' '))
        text[--len] = 0;
    if (!is_step_name(text)) {
        gale_fail(err, "%s: does not name a checkpoint (step_NNNNNNNN), it holds '%.40s'", latest, text);
    } else {
        result = gale_path_join(root, text);
        char *state = gale_path_join(result, "trainer_state.json");
        if (!gale_path_exists(state)) {
            gale_fail(err, "%s names %s, which has no trainer_state.json", latest, result);
            free(result);
            result = NULL;
        }
        free(state);
    }
    free(text);
done:
    free(root);
    free(latest);
    return result;
}

char *checkpoint_resolve(const char *path, gale_error *err)
{
    /* a plain Hugging Face folder has config.json and no trainer_state.json: taken as it is */
    char *state = gale_path_join(path, "trainer_state.json"), *config = gale_path_join(path, "config.json");
    int direct = gale_path_exists(state) || gale_path_exists(config);
    free(state);
    free(config);
    if (direct)
        return gale_xstrdup(path);
    char *dir = checkpoint_latest(path, err);
    if (!dir && !err->msg[0])
        gale_fail(err,
                  "%s: not a checkpoint or Hugging Face folder (no trainer_state.json, no config.json) nor a run "
                  "folder with checkpoints/latest",
                  path);
    return dir;
}

char *checkpoint_resolve_model(const char *path, gale_error *err)
{
    char *dir = checkpoint_resolve(path, err);
    char *cfg = gale_path_join(path, "config.json");
    if (!dir && gale_path_exists(cfg)) /* a plain Hugging Face folder has no trainer_state.json */
        dir = gale_xstrdup(path);
    free(cfg);
    return dir;
}

int checkpoint_read_state(const char *dir, gale_train_state *st, gale_error *err)
{
    memset(st, 0, sizeof *st);
    char *path = gale_path_join(dir, "trainer_state.json");
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    int rc = -1;
    if (!j) {
        gale_fail(err, "%s:%d: %s", path, jerr.line, jerr.text);
        goto done;
    }
    const char *format = NULL;
    int version = 0, world = 0;
    json_int_t step = 0, opt_step = 0, tokens = 0, seed = 0;
    if (json_unpack_ex(j, &jerr, 0, "{s:s, s:i, s:I, s:I, s:I, s:{s:I}, s:{s:i}}", "format", &format, "version",
                       &version, "step", &step, "optimizer_step", &opt_step, "tokens_seen", &tokens, "rng", "seed", &seed, "world", "size", &world)) {
        gale_fail(err, "%s: %s", path, jerr.text);
        goto done;
    }
    if (strcmp(format, GALE_TRAINER_STATE_FORMAT) || version != GALE_TRAINER_STATE_VERSION) {
        gale_fail(err, "%s: format '%s' version %d, expected '%s' version %d", path, format, version,
                  GALE_TRAINER_STATE_FORMAT, GALE_TRAINER_STATE_VERSION);
        goto done;
    }
    if (step < 0 || tokens < 0 || opt_step < 0 || opt_step > step) {
        gale_fail(err, "%s: step, optimizer_step or tokens_seen out of range", path);
        goto done;
    }
    st->step = (long)step;
    st->optimizer_step = (long)opt_step;
    st->tokens_seen = tokens;
    st->seed = (uint64_t)seed;
    st->world_size = world;
    json_t *ep = json_object_get(json_object_get(j, "world"), "expert_parallel");
    st->ep_size = json_is_integer(ep) && json_integer_value(ep) > 0 ? (int)json_integer_value(ep) : 1;
    st->loader = json_incref(json_object_get(j, "loader"));
    st->config = json_incref(json_object_get(j, "config"));
    rc = 0;
done:
    json_decref(j);
    free(path);
    return rc;
}

/* The moments of layout's tensors, by name; whole_n: the whole model's tensor count (an
 * expert-parallel rank's layout holds a share). */
static int load_moments(const char *dir, const struct model_layout *layout, int whole_n, struct adamw *opt,
                        gale_error *err)
{
    char *path = gale_path_join(dir, "optimizer*.safetensors");
    struct safetensors_set set;
    if (safetensors_open_stem(dir, "optimizer", &set, err)) {
        free(path);
        return -1;
    }
    float *m = gale_xmalloc(layout->numel * sizeof *m), *v = gale_xmalloc(layout->numel * sizeof *v);
    int rc = 0;
    char name[MODEL_TENSOR_NAME_MAX + 16];
    for (int i = 0; rc == 0 && i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        for (int which = 0; rc == 0 && which < 2; which++) {
            snprintf(name, sizeof name, "%s.%s", which ? "exp_avg_sq" : "exp_avg", t->name);
            const struct safetensors_tensor *st = safetensors_find(&set, name);
            if (!st)
                rc = gale_fail(err, "%s: no tensor %s", path, name);
            else if (st->numel != t->numel || st->ndim != t->ndim)
                rc = gale_fail(err, "%s: %s has %zu elements, the model's tensor %zu", path, name, st->numel,
                               t->numel);
            else if (st->dtype != ST_F32)
                rc = gale_fail(err, "%s: %s is %s, expected F32", path, name, safetensors_dtype_name(st->dtype));
            else
                rc = safetensors_read_f32(st, (which ? v : m) + t->offset, err);
        }
    }
    if (rc == 0 && set.n != 2 * whole_n)
        rc = gale_fail(err, "%s: %d tensors, the model has %d parameter tensors (x2 moments)", path, set.n,
                       whole_n);
    if (rc == 0) { /* a shard of the optimizer takes its ranges of the whole state */
        adamw_moments_upload(opt, m, v);
        rc = gale_backend_sync(opt->be, err);
    }
    free(m);
    free(v);
    safetensors_close(&set);
    free(path);
    return rc;
}

int checkpoint_load_weights(const char *dir, struct model *m, struct adamw *opt, gale_error *err)
{
    int rc = 0;
    if (model_lora_config(m)) {
        rc = model_lora_load(m, dir, err);
    } else if (safetensors_stem_exists(dir, "master")) {
        struct safetensors_set set;
        rc = safetensors_open_stem(dir, "master", &set, err);
        if (rc == 0) {
            rc = model_load_tensors(m, &set, NULL, NULL, err);
            if (rc)
                gale_error_prefix(err, "%s: master weights", dir);
            safetensors_close(&set);
        }
    } else {
        rc = model_load_hf(m, dir, err);
    }
    if (rc)
        return -1;
    if (!opt)
        return 0;
    gale_train_state st;
    if (checkpoint_read_state(dir, &st, err))
        return -1;
    opt->step = st.optimizer_step;
    train_state_clear(&st);
    /* under expert parallelism the files hold every expert's moments (or adapters' moments),
     * the model its share */
    struct model_layout whole;
    if (model_lora_config(m))
        rc = lora_layout_whole(model_get_config(m), model_lora_config(m), &whole, err);
    else
        model_layout_build(model_get_config(m), &whole);
    if (rc == 0)
        rc = load_moments(dir, trained_layout(m), whole.n, opt, err);
    model_layout_free(&whole);
    return rc;
}

struct model *checkpoint_open_model(const char *dir, const char *adapter, const char *backend,
                                    enum gale_dtype compute, gale_error *err)
{
    char *cfg_path = gale_path_join(dir, "config.json");
    struct model_config mc;
    struct lora_config lora;
    int rc = model_config_load(cfg_path, &mc, err);
    free(cfg_path);
    if (rc || (adapter && lora_config_read(adapter, &lora, NULL, err)))
        return NULL;
    struct model_options opts = {.aux_form = MODEL_AUX_HF, .lora = adapter ? &lora : NULL};
    struct gale_backend *be = gale_backend_create(backend, compute, err);
    struct model *m = be ? model_create(&mc, be, &opts, err) : NULL;
    if (m)
        model_own_backend(m);
    else
        gale_backend_free(be);
    if (m && (model_load_hf(m, dir, err) || (adapter && model_lora_load(m, adapter, err)))) {
        model_free(m);
        return NULL;
    }
    return m;
}

/* A checkpoint holds its weights (one file, an index, or a LoRA run's adapters) and its
 * optimizer state (one file or one per rank) besides config.json and trainer_state.json. */
static int check_complete(const char *dir, gale_error *err)
{
    static const char *const weights[] = {"model.safetensors", "model.safetensors.index.json",
                                          "adapter_model.safetensors", NULL};
    static const char *const moments[] = {"optimizer.safetensors", "optimizer.safetensors.index.json", NULL};
    const char *const *needed[] = {weights, moments};
    for (int k = 0; k < 2; k++) {
        int found = 0;
        for (int i = 0; needed[k][i] && !found; i++) {
            char *path = gale_path_join(dir, needed[k][i]);
            found = gale_path_exists(path);
            free(path);
        }
        if (!found)
            return gale_fail(err, "%s: incomplete checkpoint: no %s (nor %s)", dir, needed[k][0], needed[k][1]);
    }
    return 0;
}

/* A LoRA checkpoint's adapters: their configuration and base (its config.json is the base's). */
static int describe_adapters(const char *dir, FILE *out, char **base, gale_error *err)
{
    struct lora_config lc;
    if (lora_config_read(dir, &lc, base, err))
        return -1;
    char targets[128];
    lora_targets_format(lc.targets, targets, sizeof targets);
    fprintf(out, "adapters     LoRA r=%d alpha=%g%s dropout=%g on %s%s (PEFT's format)\nbase         %s\n",
            lc.rank, lc.alpha, lc.rslora ? " (rsLoRA)" : "", lc.dropout, targets,
            lc.train_router ? ", routers trained whole" : "", *base ? *base : "(not named)");
    return 0;
}

int checkpoint_describe(const char *dir, FILE *out, gale_error *err)
{
    gale_train_state st;
    if (checkpoint_read_state(dir, &st, err))
        return -1;
    if (check_complete(dir, err)) {
        train_state_clear(&st);
        return -1;
    }
    char *adapter_cfg = gale_path_join(dir, "adapter_config.json"), *base = NULL;
    int adapters = gale_path_exists(adapter_cfg);
    free(adapter_cfg);
    if (adapters && describe_adapters(dir, out, &base, err)) {
        train_state_clear(&st);
        return -1;
    }
    if (adapters && !base) {
        train_state_clear(&st);
        return 0;
    }
    /* a LoRA checkpoint's model is its base's */
    const char *model_dir = adapters ? base : dir;
    char *cfg_path = gale_path_join(model_dir, "config.json");
    struct model_config mc;
    int rc = model_config_load(cfg_path, &mc, err);
    free(cfg_path);
    free(base);
    if (rc == 0) {
        const char *tok_name = "(none)";
        for (int i = 0; i < 2; i++) {
            char *file = gale_path_join(dir, tokenizer_file_names[i]);
            if (gale_path_exists(file))
                tok_name = tokenizer_file_names[i];
            free(file);
        }
        fprintf(out, "checkpoint   %s\n", dir);
        fprintf(out, "step         %ld\n", st.step);
        fprintf(out, "tokens seen  %lld\n", (long long)st.tokens_seen);
        fprintf(out, "world        %d rank(s) = data parallel %d x expert parallel %d\n", st.world_size,
                st.world_size / st.ep_size, st.ep_size);
        fprintf(out, "model        %s, %d layers, hidden %d, heads %d/%d kv, vocab %d", model_kind_name(mc.kind),
                mc.num_layers, mc.hidden_size, mc.num_heads, mc.num_kv_heads, mc.vocab_size);
        if (mc.num_experts)
            fprintf(out, ", %d experts top-%d", mc.num_experts, mc.num_experts_per_tok);
        fprintf(out, "\nparameters   %lld\n", model_config_num_params(&mc));
        fprintf(out, "tokenizer    %s\n", tok_name);
        if (st.config) {
            char *text = json_dumps(st.config, JSON_INDENT(2) | JSON_SORT_KEYS);
            fprintf(out, "run config   %s\n", text);
            free(text);
        }
    }
    train_state_clear(&st);
    return rc;
}
