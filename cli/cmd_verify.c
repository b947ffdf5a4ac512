/* gale verify: checks a backend against a reference fixture folder. */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "model/ops.h"
#include "train/verify.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gale verify --fixture DIR [--backend cpu|cuda] [--precision fp32|bf16]\n\n"
            "Runs the model on a reference fixture (config.json, model.safetensors,\n"
            "expected.safetensors, expected.json; see docs/math.md in the source) and compares\n"
            "logits, losses, every gradient, the router's choices and three AdamW steps with\n"
            "the reference, printing each relative error against its tolerance.\n\n"
            "  --fixture DIR    the fixture folder (may be given more than once)\n"
            "  --backend NAME   kernels to check: cpu (default) or cuda (a build with CUDA)\n"
            "  --precision P    compute dtype, fp32 (default: the contract's tolerances) or bf16\n"
            "                   (tolerances derived from bf16's 8 bits and the model's depth;\n"
            "                   docs/engine.md)\n\n"
            "Exit status: 0 when every check is within tolerance, 1 when one is not,\n"
            "2 on a usage error or an unreadable fixture.\n");
}

int cmd_verify(int argc, char **argv)
{
    const char *backend = "cpu", *precision = "fp32";
    const char *fixtures[64];
    int nfixtures = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--fixture") && i + 1 < argc) {
            if (nfixtures == (int)(sizeof fixtures / sizeof *fixtures)) {
                fprintf(stderr, "gale verify: too many --fixture options\n");
                return 2;
            }
            fixtures[nfixtures++] = argv[++i];
        } else if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            backend = argv[++i];
        } else if (!strcmp(argv[i], "--precision") && i + 1 < argc) {
            precision = argv[++i];
        } else {
            fprintf(stderr, "gale verify: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (nfixtures == 0) {
        fprintf(stderr, "gale verify: --fixture DIR is required\n");
        usage(stderr);
        return 2;
    }
    enum gale_dtype compute;
    if (gale_dtype_parse(precision, &compute) || (compute != GALE_F32 && compute != GALE_BF16)) {
        fprintf(stderr, "gale verify: --precision '%s': expected fp32 or bf16\n", precision);
        return 2;
    }
    gale_error err;
    struct gale_backend *be = gale_backend_create(backend, compute, &err);
    if (!be) {
        fprintf(stderr, "gale verify: %s\n", err.msg);
        return 2;
    }
    int failed = 0;
    for (int i = 0; i < nfixtures; i++) {
        struct verify_result res;
        if (verify_fixture(fixtures[i], be, stdout, &res, &err)) {
            fprintf(stderr, "gale verify: %s\n", err.msg);
            gale_backend_free(be);
            return 2;
        }
        printf("%s: %d checks, %d failed: %s\n", fixtures[i], res.checks, res.failed,
               res.failed ? "FAIL" : "ok");
        failed += res.failed > 0;
    }
    gale_backend_free(be);
    return failed ? 1 : 0;
}
