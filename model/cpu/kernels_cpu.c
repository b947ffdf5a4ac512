#include "model/cpu/kernels_cpu.h"

#include <immintrin.h>
#include <math.h>

/* AVX2 versions are compiled for that target alone and called only when the CPU has it. The
 * exp and sum kernels may use FMA; AdamW's may not (its target leaves FMA out, so the compiler
 * cannot contract a multiply and an add): it gives the scalar version's bits. */
#define AVX2_FMA __attribute__((target("avx2,fma")))
#define AVX2_ONLY __attribute__((target("avx2")))

static int portable_only;

void kernels_cpu_portable_only(int on)
{
    portable_only = on;
}

static int have_avx2(void)
{
    return !portable_only && __builtin_cpu_supports("avx2");
}

static int have_avx2_fma(void)
{
    return have_avx2() && __builtin_cpu_supports("fma");
}

/* lanes [0, n) of a vector set, the others clear: the tail of a row */
AVX2_FMA static __m256i tail_mask(size_t n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

AVX2_FMA static float hmax(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

AVX2_FMA static double hsum_pd(__m256d v)
{
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

/* the 8 floats as 2 x 4 doubles, added up */
AVX2_FMA static double hsum_ps(__m256 v)
{
    __m256d d = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                              _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    return hsum_pd(d);
}

AVX2_FMA static float max_avx2(const float *x, size_t n)
{
    __m256 a = _mm256_set1_ps(-INFINITY), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a = _mm256_max_ps(a, _mm256_loadu_ps(x + i));
        b = _mm256_max_ps(b, _mm256_loadu_ps(x + i + 8));
        c = _mm256_max_ps(c, _mm256_loadu_ps(x + i + 16));
        d = _mm256_max_ps(d, _mm256_loadu_ps(x + i + 24));
    }
    a = _mm256_max_ps(_mm256_max_ps(a, b), _mm256_max_ps(c, d));
    float mx = hmax(a);
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    return mx;
}

float kernel_max(const float *x, size_t n)
{
    if (have_avx2_fma())
        return max_avx2(x, n);
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    return mx;
}

/* exp(x) for x <= 88: Cephes' expf (x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial in r,
 * times 2^n), 0 below -87.3 where 2^n would leave the normal range; NaN stays NaN. */
AVX2_FMA static __m256 exp_avx2(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-87.33654f);
    __m256 below = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    /* min and max return their second operand when one is NaN: x goes second, NaN stays */
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lo, x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(below, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* A block's fp32 partial sums stay short (at most 1024 / 16 = 64 additions per lane): the row's
 * sum is as accurate as a double accumulator's to a few fp32 ulps. */
#define EXP_SUM_BLOCK 1024

AVX2_FMA static double exp_sum_avx2(float *out, const float *x, size_t n, float shift)
{
    __m256 s = _mm256_set1_ps(shift);
    double total = 0;
    size_t i = 0;
    while (i < n) {
        size_t end = n - i > EXP_SUM_BLOCK ? i + EXP_SUM_BLOCK : n;
        __m256 a = _mm256_setzero_ps(), b = a;
        for (; i + 16 <= end; i += 16) {
            __m256 e0 = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
            __m256 e1 = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), s));
            if (out) {
                _mm256_storeu_ps(out + i, e0);
                _mm256_storeu_ps(out + i + 8, e1);
            }
            a = _mm256_add_ps(a, e0);
            b = _mm256_add_ps(b, e1);
        }
        for (; i < end; i += 8) {
            __m256i mask = tail_mask(end - i);
            __m256 e = exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), s));
            e = _mm256_and_ps(e, _mm256_castsi256_ps(mask));
            if (out)
                _mm256_maskstore_ps(out + i, mask, e);
            a = _mm256_add_ps(a, e);
        }
        total += hsum_ps(_mm256_add_ps(a, b));
    }
    return total;
}

double kernel_exp_sum(float *out, const float *x, size_t n, float shift)
{
    if (have_avx2_fma())
        return exp_sum_avx2(out, x, n, shift);
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        float e = expf(x[i] - shift);
        if (out)
            out[i] = e;
        total += e;
    }
    return total;
}

AVX2_FMA static __m256 sigmoid_avx2(__m256 x)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

static inline float sigmoid(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

AVX2_FMA static void swiglu_fwd_avx2(float *out, const float *gate, const float *up, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sigmoid_avx2(g)), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++)
        out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

void kernel_swiglu_fwd(float *out, const float *gate, const float *up, size_t n)
{
    if (have_avx2_fma()) {
        swiglu_fwd_avx2(out, gate, up, n);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

static void swiglu_bwd_scalar(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                              size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], sig = sigmoid(g), d = dout[i];
        dup[i] = d * g * sig;
        dgate[i] = d * up[i] * sig * (1.0f + g * (1.0f - sig));
    }
}

AVX2_FMA static void swiglu_bwd_avx2(float *dgate, float *dup, const float *dout, const float *gate,
                                     const float *up, size_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i), d = _mm256_loadu_ps(dout + i), sig = sigmoid_avx2(g);
        __m256 dg = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(d, _mm256_loadu_ps(up + i)), sig),
                                  _mm256_add_ps(one, _mm256_mul_ps(g, _mm256_sub_ps(one, sig))));
        _mm256_storeu_ps(dup + i, _mm256_mul_ps(_mm256_mul_ps(d, g), sig));
        _mm256_storeu_ps(dgate + i, dg);
    }
    swiglu_bwd_scalar(dgate + i, dup + i, dout + i, gate + i, up + i, n - i);
}

void kernel_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                       size_t n)
{
    if (have_avx2_fma())
        swiglu_bwd_avx2(dgate, dup, dout, gate, up, n);
    else
        swiglu_bwd_scalar(dgate, dup, dout, gate, up, n);
}

AVX2_FMA static void scale_avx2(float *x, size_t n, float s)
{
    __m256 sv = _mm256_set1_ps(s);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), sv));
    for (; i < n; i++)
        x[i] *= s;
}

void kernel_scale(float *x, size_t n, float s)
{
    if (have_avx2_fma()) {
        scale_avx2(x, n, s);
        return;
    }
    for (size_t i = 0; i < n; i++)
        x[i] *= s;
}

AVX2_FMA static double sumsq_avx2(const float *x, size_t n)
{
    __m256d a = _mm256_setzero_pd(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256d x0 = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), x1 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        __m256d x2 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 8)), x3 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 12));
        a = _mm256_fmadd_pd(x0, x0, a);
        b = _mm256_fmadd_pd(x1, x1, b);
        c = _mm256_fmadd_pd(x2, x2, c);
        d = _mm256_fmadd_pd(x3, x3, d);
    }
    double s = hsum_pd(_mm256_add_pd(_mm256_add_pd(a, b), _mm256_add_pd(c, d)));
    for (; i < n; i++)
        s += (double)x[i] * x[i];
    return s;
}

double kernel_sumsq(const float *x, size_t n)
{
    if (have_avx2_fma())
        return sumsq_avx2(x, n);
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return s;
}

static void adamw_scalar(float *p, const float *g, float *m, float *v, size_t n,
                         const struct adamw_kernel_args *a)
{
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * a->grad_scale;
        p[i] *= a->decay;
        m[i] += (1.0f - a->beta1) * (gi - m[i]);
        v[i] = a->beta2 * v[i] + (1.0f - a->beta2) * gi * gi;
        p[i] -= a->step_size * m[i] / (sqrtf(v[i]) / a->bc2_sqrt + a->eps);
    }
}

AVX2_ONLY static void adamw_avx2(float *p, const float *g, float *m, float *v, size_t n,
                                 const struct adamw_kernel_args *a)
{
    const __m256 scale = _mm256_set1_ps(a->grad_scale), decay = _mm256_set1_ps(a->decay);
    const __m256 b1c = _mm256_set1_ps(1.0f - a->beta1), b2 = _mm256_set1_ps(a->beta2);
    const __m256 b2c = _mm256_set1_ps(1.0f - a->beta2), step = _mm256_set1_ps(a->step_size);
    const __m256 bc2 = _mm256_set1_ps(a->bc2_sqrt), eps = _mm256_set1_ps(a->eps);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), scale);
        __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
        __m256 mi = _mm256_loadu_ps(m + i);
        mi = _mm256_add_ps(mi, _mm256_mul_ps(b1c, _mm256_sub_ps(gi, mi)));
        __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)),
                                  _mm256_mul_ps(_mm256_mul_ps(b2c, gi), gi));
        __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
        pi = _mm256_sub_ps(pi, _mm256_div_ps(_mm256_mul_ps(step, mi), denom));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        _mm256_storeu_ps(p + i, pi);
    }
    adamw_scalar(p + i, g + i, m + i, v + i, n - i, a);
}

void kernel_adamw(float *p, const float *g, float *m, float *v, size_t n,
                  const struct adamw_kernel_args *a)
{
    if (have_avx2())
        adamw_avx2(p, g, m, v, n, a);
    else
        adamw_scalar(p, g, m, v, n, a);
}
