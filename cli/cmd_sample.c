/* gale sample: argument parsing, prompt encoding and printing around sample_generate
 * (train/sample.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "data/chat.h"
#include "data/tokenizer.h"
#include "train/checkpoint.h"
#include "train/sample.h"
#include "util/file.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: gale sample --checkpoint DIR [--adapter DIR] --prompt TEXT [--chat]\n"
               "                   [--template v1|v3|v7|llama2] [--max-new N] [--temperature T] [--top-p P]\n"
               "                   [--seed S] [--tokenizer M] [--backend cpu|cuda] [--precision fp32|bf16]\n"
               "\n"
               "Generates text from a checkpoint (or a run folder: its latest checkpoint, or any Hugging Face\n"
               "folder with config.json and model.safetensors). Stops at EOS or after --max-new tokens.\n"
               "The prompt runs once into a KV cache, then each new token alone; stderr gets the counts,\n"
               "the prompt's time and the generation's tokens/s.\n"
               "\n"
               "  --adapter DIR     LoRA adapters in PEFT's format (a LoRA run's checkpoint) on the base\n"
               "  --chat            wrap the prompt as a user turn of the chat template (default v1)\n"
               "  --max-new N       tokens to generate at most (default 64)\n"
               "  --temperature T   0 for greedy (default 0.8)\n"
               "  --top-p P         nucleus mass (default 0.95)\n"
               "  --seed S          the draw's seed (default 0)\n"
               "  --tokenizer M     SentencePiece .model or Tekken .json file, or a name: mistral-v1,\n"
               "                    mistral-v3, tekken-240718, tekken-240911\n"
               "                    (default DIR/tokenizer.model or DIR/tekken.json, else the adapter's)\n"
               "  --backend NAME    where the model runs: cpu (default) or cuda (a build with CUDA)\n"
               "  --precision P     compute dtype: fp32 (default) or bf16 (fp32 master weights)\n");
}

typedef struct printer {
    const gale_tokenizer *tok;
    size_t printed; /* bytes of the decoded generation already written */
    int eos_id;
} printer;

/* Prints the new bytes of the decoded generation (decoding all of it each time keeps
 * multi-token characters whole). */
static void print_new_text(const int32_t *ids, size_t n, void *ctx)
{
    printer *p = ctx;
    if (n && ids[n - 1] == p->eos_id)
        n--;
    gale_bytes text = {0};
    tokenizer_decode(p->tok, ids, n, &text);
    if (text.n > p->printed) {
        fwrite(text.v + p->printed, 1, text.n - p->printed, stdout);
        fflush(stdout);
        p->printed = text.n;
    }
    gale_bytes_free(&text);
}

static int parse_number(const char *opt, const char *text, double lo, double hi, double *out)
{
    char *end;
    *out = strtod(text, &end);
    /* written as "in range" so that NaN, which compares false with everything, fails it */
    if (end == text || *end || !(*out >= lo && *out <= hi)) {
        fprintf(stderr, "gale sample: %s needs a number in [%g, %g], got '%s'\n", opt, lo, hi, text);
        return -1;
    }
    return 0;
}

int cmd_sample(int argc, char **argv)
{
    const char *ckpt_arg = NULL, *adapter = NULL, *prompt = NULL, *tok_path_arg = NULL, *template_name = "v1";
    const char *backend = "cpu";
    enum gale_dtype compute = GALE_F32;
    int chat = 0;
    double max_new = 64, seed = 0;
    gale_sample_options so = {.temperature = 0.8, .top_p = 0.95};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--chat")) {
            chat = 1;
        } else if (has && !strcmp(a, "--checkpoint")) {
            ckpt_arg = argv[++i];
        } else if (has && !strcmp(a, "--adapter")) {
            adapter = argv[++i];
        } else if (has && !strcmp(a, "--prompt")) {
            prompt = argv[++i];
        } else if (has && !strcmp(a, "--tokenizer")) {
            tok_path_arg = argv[++i];
        } else if (has && !strcmp(a, "--template")) {
            template_name = argv[++i];
        } else if (has && !strcmp(a, "--max-new")) {
            bad = parse_number(a, argv[++i], 1, 1e6, &max_new);
        } else if (has && !strcmp(a, "--temperature")) {
            bad = parse_number(a, argv[++i], 0, 100, &so.temperature);
        } else if (has && !strcmp(a, "--top-p")) {
            bad = parse_number(a, argv[++i], 1e-6, 1, &so.top_p);
        } else if (has && !strcmp(a, "--backend")) {
            backend = argv[++i];
        } else if (has && !strcmp(a, "--precision")) {
            bad = gale_dtype_parse(argv[++i], &compute) || (compute != GALE_F32 && compute != GALE_BF16);
            if (bad)
                fprintf(stderr, "gale sample: --precision '%s': expected fp32 or bf16\n", argv[i]);
        } else if (has && !strcmp(a, "--seed")) {
            bad = parse_number(a, argv[++i], 0, 1.8e19, &seed);
        } else {
            fprintf(stderr, "gale sample: unexpected argument '%s'\n", a);
            bad = 1;
        }
        if (bad) {
            usage(stderr);
            return 2;
        }
    }
    if (!ckpt_arg || !prompt) {
        fprintf(stderr, "gale sample: --checkpoint and --prompt are required\n");
        usage(stderr);
        return 2;
    }
    so.max_new = (int)max_new;
    so.seed = (uint64_t)seed;

    gale_error err = {{0}};
    char *dir = NULL, *tok_path = NULL;
    gale_tokenizer *tok = NULL;
    struct model *m = NULL;
    gale_ids ids = {0}, out = {0};
    int rc = 1;
    enum chat_template tmpl;
    if (chat && chat_template_from_name(template_name, &tmpl, &err))
        goto done;
    if (!(dir = checkpoint_resolve_model(ckpt_arg, &err)))
        goto done;
    /* the base's tokenizer file, else the adapter checkpoint's */
    for (int i = 0; !tok_path_arg && i < 4 && !tok_path; i++) {
        const char *folder = i < 2 ? dir : adapter;
        char *file = folder ? gale_path_join(folder, tokenizer_file_names[i % 2]) : NULL;
        if (file && gale_path_exists(file))
            tok_path = file;
        else
            free(file);
    }
    if (tok_path_arg)
        tok_path = gale_xstrdup(tok_path_arg);
    else if (!tok_path) {
        gale_fail(&err, "%s has no tokenizer.model or tekken.json: give --tokenizer M", dir);
        goto done;
    }
    if (!(tok = tokenizer_load(tok_path, &err)) ||
        !(m = checkpoint_open_model(dir, adapter, backend, compute, &err)))
        goto done;
    if (tokenizer_vocab_size(tok) > model_get_config(m)->vocab_size) {
        gale_fail(&err, "%s has %d pieces, more than the model's vocab_size %d", tok_path, tokenizer_vocab_size(tok),
                  model_get_config(m)->vocab_size);
        goto done;
    }
    if (chat) {
        json_t *conv = json_pack("{s:[{s:s, s:s}]}", "messages", "role", "user", "content", prompt);
        int bad = chat_encode(tok, tmpl, CHAT_FOR_PROMPT, conv, &ids, NULL, &err);
        json_decref(conv);
        if (bad)
            goto done;
    } else {
        gale_ids_push(&ids, tokenizer_bos_id(tok));
        tokenizer_encode(tok, prompt, strlen(prompt), &ids);
    }
    so.eos_id = tokenizer_eos_id(tok);
    printer p = {tok, 0, so.eos_id};
    fputs(prompt, stdout);
    fputs(chat ? "\n" : "", stdout);
    gale_sample_stats stats;
    if (sample_generate(m, ids.v, ids.n, &so, &out, print_new_text, &p, &stats, &err))
        goto done;
    printf("\n");
    fflush(stdout); /* the text before the statistics when both go to one file */
    fprintf(stderr, "[%zu prompt tokens, %zu generated%s; prefill %.3f s, generation %.1f tokens/s]\n", ids.n,
            out.n, out.n && out.v[out.n - 1] == so.eos_id ? ", stopped at EOS" : "", stats.prefill_s,
            stats.generate_s > 0 ? (double)out.n / stats.generate_s : 0.0);
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "gale sample: %s\n", err.msg);
    gale_ids_free(&ids);
    gale_ids_free(&out);
    model_free(m);
    if (tok)
        tokenizer_free(tok);
    free(tok_path);
    free(dir);
    return rc;
}
