/* backend: a device the model runs on, as an object. A backend is its ops table
 * (model/ops.h) plus its own context (the CPU: its thread team; a GPU: stream, BLAS handle,
 * workspace), created and destroyed explicitly. Every op takes the backend first.
 *
 * Errors are sticky, as on a GPU stream: an op that fails (an allocation, a kernel) records
 * the first failure in the backend, naming the op and its sizes, and the ops after it do
 * nothing; gale_backend_sync reports it. So the model's graph reads as straight-line code and
 * checks once per pass, and an asynchronous backend can report a kernel's failure when it is
 * seen, not when it is launched. Nothing aborts.
 *
 * Transfers are asynchronous: upload may read its host source, and download write its host
 * destination, at any time until the next gale_backend_sync; host buffers that take part in
 * transfers come from host_alloc (pinned memory on a GPU). See docs/engine.md. */
#ifndef GALE_MODEL_BACKEND_H
#define GALE_MODEL_BACKEND_H

#include <stddef.h>

#include "util/error.h"

/* Element types of tensors. The CPU backend computes in fp32 and stores bf16 values rounded
 * to nearest even in fp32 containers (its bf16 mode); f16 and fp8 are named for backends to
 * come. */
enum gale_dtype { GALE_F32, GALE_BF16, GALE_F16, GALE_FP8_E4M3 };

const char *gale_dtype_name(enum gale_dtype dt);
/* Bytes per element on a device that stores the type natively. */
size_t gale_dtype_size(enum gale_dtype dt);
/* "fp32"/"f32", "bf16", "fp16"/"f16", "fp8"; -1 when unknown. */
int gale_dtype_parse(const char *name, enum gale_dtype *out);

struct gale_ops;

struct gale_backend {
    const struct gale_ops *ops;
    void *ctx;                 /* the backend's own state, only its ops look inside */
    enum gale_dtype compute;   /* weights' compute copy and activations (see docs/engine.md) */
    int failed;                /* set by the first failure, cleared by gale_backend_sync */
    gale_error error;          /* that failure */
    unsigned long waits;       /* gale_backend_wait calls so far: work queued before a wait
                                  numbered n is done once waits > n */
};

/* The backend called name ("cpu", or "cuda": its module opened on first use) computing in
 * `compute`; NULL with err set when its module is missing or does not load, it does not
 * support that dtype, or it cannot start. */
struct gale_backend *gale_backend_create(const char *name, enum gale_dtype compute,
                                         gale_error *err);
void gale_backend_free(struct gale_backend *be);

/* Waits for everything queued (ops->synchronize) and counts the wait. */
void gale_backend_wait(struct gale_backend *be);

/* gale_backend_wait, then returns -1 with the first failure since the last sync (and clears
 * it), else 0. */
int gale_backend_sync(struct gale_backend *be, gale_error *err);

/* Records a failure (the first one is kept); for ops. */
void gale_backend_fail(struct gale_backend *be, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Buffers of n elements of the compute dtype of be, in bytes (the CPU's bf16 mode keeps fp32
 * containers). */
size_t gale_backend_compute_bytes(const struct gale_backend *be, size_t n);

#endif
