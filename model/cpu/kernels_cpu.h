/* kernels_cpu: the CPU backend's vectorised inner loops over plain float arrays, each on one
 * thread (ops_cpu.c splits the work over OpenMP threads and calls these per block). The build
 * targets generic x86-64, so each kernel has an AVX2+FMA version chosen at run time when the CPU
 * has it, and a portable one computing the same formulas. */
#ifndef GALE_MODEL_CPU_KERNELS_CPU_H
#define GALE_MODEL_CPU_KERNELS_CPU_H

#include <stddef.h>

/* For tests: on (nonzero), every kernel runs its portable version even where AVX2 is present. */
void kernels_cpu_portable_only(int on);

/* The largest of x[0, n) (n > 0; -inf when every element is). */
float kernel_max(const float *x, size_t n);

/* Sum of exp(x[i] - shift) over [0, n), for shift >= max(x). When out is not NULL, also writes
 * out[i] = exp(x[i] - shift) (out may be x). exp is a polynomial accurate to 2 ulp, flushed to 0
 * below exp(-87); the sum is kept in fp32 per block of 1024 elements and added up in double. */
double kernel_exp_sum(float *out, const float *x, size_t n, float shift);

/* SwiGLU over [0, n): out = silu(gate) * up, silu(x) = x sigmoid(x) = x / (1 + exp(-x)); the
 * backward writes dup = dout silu(gate) and dgate = dout up sigmoid (1 + gate (1 - sigmoid))
 * (dgate may be dout). exp as in kernel_exp_sum. */
void kernel_swiglu_fwd(float *out, const float *gate, const float *up, size_t n);
void kernel_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                       size_t n);

/* x[i] *= s */
void kernel_scale(float *x, size_t n, float s);

/* Sum of x[i]^2, each square and the sum in double. */
double kernel_sumsq(const float *x, size_t n);

/* The constants of one AdamW step (torch.optim.AdamW, decoupled decay). */
struct adamw_kernel_args {
    float grad_scale;   /* the gradient is grad_scale * g (clip_grad_norm_'s factor; 1: none) */
    float decay;        /* 1 - lr * weight_decay */
    float beta1, beta2;
    float step_size;    /* lr / (1 - beta1^step) */
    float bc2_sqrt;     /* sqrt(1 - beta2^step) */
    float eps;
};

/* One AdamW step over [0, n) in one pass: g = grad_scale * g (rounded to fp32, as torch's
 * in-place clip leaves it), p *= decay, m += (1 - beta1) (g - m), v = beta2 v + (1 - beta2) g g,
 * p -= step_size m / (sqrt(v) / bc2_sqrt + eps). The same operations in the same order as the
 * scalar reference (no fused multiply-adds), so both versions give the same bits. */
void kernel_adamw(float *p, const float *g, float *m, float *v, size_t n,
                  const struct adamw_kernel_args *a);

#endif
