/* blas_core: makes OpenBLAS run the widest kernels this CPU has. A DYNAMIC_ARCH OpenBLAS (Debian's)
 * picks its kernel set ("core") from the CPU's family and model when the library loads; a release
 * older than the CPU does not know the model and falls back to its SSE3 "Prescott" kernels (Debian's
 * 0.3.21 on Intel family 6 model 207: sgemm at ~30 GFLOP/s instead of ~130 with its AVX-512
 * SkylakeX kernels). The core can only be chosen before the library loads, through
 * OPENBLAS_CORETYPE, so the fix is to set it and re-execute the program once, first thing in main.
 * A user's (or the machine's) own OPENBLAS_CORETYPE is always kept: some machines set it on
 * purpose, where an old OpenBLAS computes wrong results with the newer kernels. */
#ifndef GALE_MODEL_CPU_BLAS_CORE_H
#define GALE_MODEL_CPU_BLAS_CORE_H

#include <stddef.h>

/* The vector units a CPU has, or a BLAS core was written for, widest last. */
enum blas_isa { BLAS_ISA_SSE, BLAS_ISA_AVX, BLAS_ISA_AVX2, BLAS_ISA_AVX512 };

/* What the running CPU supports (cpuid, and the OS saving the registers). */
enum blas_isa blas_cpu_isa(void);

/* The ISA an OpenBLAS core name's kernels use (case-insensitive; unknown names: SSE). */
enum blas_isa blas_core_isa(const char *core);

/* The core to force on a CPU with isa when OpenBLAS chose `chosen`, or NULL to keep it: the
 * chosen core is as wide as the CPU allows, or the CPU has nothing wider than SSE. */
const char *blas_core_upgrade(const char *chosen, enum blas_isa isa);

/* Called first in main with main's argv: when OpenBLAS (a DYNAMIC_ARCH build) chose a core
 * narrower than the CPU's vector units and OPENBLAS_CORETYPE is unset, sets it to the right
 * core and re-executes /proc/self/exe (once: a marker in the environment stops a loop).
 * Returns only when no re-execution was needed or it failed (then OpenBLAS's choice stands). */
void blas_core_select(char **argv);

/* One line saying which OpenBLAS kernels run and who chose them, e.g. "OpenBLAS 0.3.21, core
 * SkylakeX (set by gale: the library chose Prescott on this AVX-512 CPU)". */
void blas_core_describe(char *buf, size_t size);

#endif
