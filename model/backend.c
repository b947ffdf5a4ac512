/* backend: creating a backend by name, its sticky error, and the dtypes' names. */
#include "model/backend.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/ops.h"
#include "util/module.h"

const char *gale_dtype_name(enum gale_dtype dt)
{
    switch (dt) {
    case GALE_F32: return "fp32";
    case GALE_BF16: return "bf16";
    case GALE_F16: return "fp16";
    case GALE_FP8_E4M3: return "fp8";
    }
    return "unknown";
}

size_t gale_dtype_size(enum gale_dtype dt)
{
    switch (dt) {
    case GALE_F32: return 4;
    case GALE_BF16: case GALE_F16: return 2;
    case GALE_FP8_E4M3: return 1;
    }
    return 4;
}

int gale_dtype_parse(const char *name, enum gale_dtype *out)
{
    static const struct { const char *name; enum gale_dtype dt; } names[] = {
        {"fp32", GALE_F32}, {"f32", GALE_F32}, {"bf16", GALE_BF16}, {"fp16", GALE_F16},
        {"f16", GALE_F16}, {"fp8", GALE_FP8_E4M3}};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(name, names[i].name)) {
            *out = names[i].dt;
            return 0;
        }
    return -1;
}

const char *gale_op_name(enum gale_op op)
{
    static const char *const names[GALE_OP_COUNT] = {
        "matmul", "embedding", "rmsnorm", "rope", "attention", "attention_cached", "swiglu",
        "router", "moe", "cross_entropy", "adamw", "reduce", "dropout"};
    return op < GALE_OP_COUNT ? names[op] : "unknown";
}

/* The CUDA backend's module (util/module.h finds it: $GALE_CUDA_MODULE, beside the binary or
 * in ../lib/gale). NULL with why in err when there is none or it does not open (no driver, a
 * missing cuBLAS). The handle is kept open for the life of the process: its table is static. */
#define CUDA_MODULE "libgale_cuda.so"

static const struct gale_ops *cuda_module_ops(gale_error *err)
{
    static const struct gale_ops *ops;
    if (ops)
        return ops;
    int missing;
    gale_error why;
    void *module = gale_module_open(CUDA_MODULE, "GALE_CUDA_MODULE", RTLD_NOW | RTLD_LOCAL,
                                    "gale_ops_cuda", &missing, &why);
    if (module) {
        const struct gale_ops *(*table)(void) = (const struct gale_ops *(*)(void))dlsym(module, "gale_ops_cuda");
        return ops = table();
    }
    if (missing && !getenv("GALE_CUDA_MODULE"))
        gale_fail(err, "backend 'cuda': %s (gale was built without CUDA: no nvcc found, or "
                       "GALE_CUDA=OFF); available: cpu", why.msg);
    else
        gale_fail(err, "backend 'cuda': %s", why.msg);
    return NULL;
}

/* The table of backend `name` for compute dtype dt; NULL with err set. */
static const struct gale_ops *ops_for(const char *name, enum gale_dtype dt, gale_error *err)
{
    const struct gale_ops *ops = NULL;
    if (!strcmp(name, "cpu")) {
        ops = dt == GALE_F32 ? gale_ops_cpu() : dt == GALE_BF16 ? gale_ops_cpu_bf16() : NULL;
    } else if (!strcmp(name, "cuda")) {
        ops = cuda_module_ops(err);
        if (!ops)
            return NULL;
        ops = dt == GALE_F32 || dt == GALE_BF16 ? ops : NULL;
    } else {
        gale_fail(err, "backend '%s' is unknown (gale has cpu and cuda)", name);
        return NULL;
    }
    if (!ops)
        gale_fail(err, "backend '%s' does not compute in %s (it does fp32 and bf16)", name,
                  gale_dtype_name(dt));
    return ops;
}

struct gale_backend *gale_backend_create(const char *name, enum gale_dtype compute,
                                         gale_error *err)
{
    const struct gale_ops *ops = ops_for(name, compute, err);
    if (!ops)
        return NULL;
    struct gale_backend *be = gale_xcalloc(1, sizeof *be);
    be->ops = ops;
    be->compute = compute;
    if (ops->init(be, err)) {
        free(be);
        return NULL;
    }
    return be;
}

void gale_backend_free(struct gale_backend *be)
{
    if (!be)
        return;
    be->ops->destroy(be);
    free(be);
}

void gale_backend_wait(struct gale_backend *be)
{
    be->ops->synchronize(be);
    be->waits++;
}

int gale_backend_sync(struct gale_backend *be, gale_error *err)
{
    gale_backend_wait(be);
    if (!be->failed)
        return 0;
    be->failed = 0;
    if (err)
        *err = be->error;
    return -1;
}

void gale_backend_fail(struct gale_backend *be, const char *fmt, ...)
{
    if (be->failed)
        return;
    be->failed = 1;
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(be->error.msg, sizeof be->error.msg, "backend %s: ", be->ops->name);
    vsnprintf(be->error.msg + n, sizeof be->error.msg - (size_t)n, fmt, ap);
    va_end(ap);
}

size_t gale_backend_compute_bytes(const struct gale_backend *be, size_t n)
{
    return n * be->ops->dtype_bytes(be, be->compute);
}
