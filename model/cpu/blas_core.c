#include "model/cpu/blas_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* OpenBLAS's own queries; cblas.h declares them in some releases only. */
char *openblas_get_corename(void);
char *openblas_get_config(void);

/* Set to the forced core's name by the re-execution, so that it happens once and is reported. */
#define REEXEC_MARKER "GALE_OPENBLAS_CORETYPE_SET"

enum blas_isa blas_cpu_isa(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
        return BLAS_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return BLAS_ISA_AVX2;
    if (__builtin_cpu_supports("avx"))
        return BLAS_ISA_AVX;
    return BLAS_ISA_SSE;
}

/* The cores of OpenBLAS's x86-64 DYNAMIC_ARCH builds whose kernels use AVX or wider; the
 * others (Prescott, Core2, Nehalem, Barcelona, ...) are SSE. */
static const struct {
    const char *name;
    enum blas_isa isa;
} wide_cores[] = {
    {"SkylakeX", BLAS_ISA_AVX512},       {"Cooperlake", BLAS_ISA_AVX512},
    {"SapphireRapids", BLAS_ISA_AVX512}, {"Sapphire Rapids", BLAS_ISA_AVX512},
    {"Haswell", BLAS_ISA_AVX2},          {"Zen", BLAS_ISA_AVX2},
    {"Sandybridge", BLAS_ISA_AVX},       {"Bulldozer", BLAS_ISA_AVX},
    {"Piledriver", BLAS_ISA_AVX},        {"Steamroller", BLAS_ISA_AVX},
    {"Excavator", BLAS_ISA_AVX},
};

enum blas_isa blas_core_isa(const char *core)
{
    for (size_t i = 0; core && i < sizeof wide_cores / sizeof *wide_cores; i++)
        if (!strcasecmp(core, wide_cores[i].name))
            return wide_cores[i].isa;
    return BLAS_ISA_SSE;
}

const char *blas_core_upgrade(const char *chosen, enum blas_isa isa)
{
    /* the oldest core of each ISA that every OpenBLAS since 0.3.0 builds into DYNAMIC_ARCH */
    static const char *const best[] = {NULL, "Sandybridge", "Haswell", "SkylakeX"};
    if (blas_core_isa(chosen) >= isa)
        return NULL;
    return best[isa];
}

static const char *isa_name(enum blas_isa isa)
{
    static const char *const names[] = {"SSE", "AVX", "AVX2", "AVX-512"};
    return names[isa];
}

void blas_core_select(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE") || getenv(REEXEC_MARKER))
        return; /* the user's or the machine's choice, or ours already */
    const char *config = openblas_get_config();
    if (!config || !strstr(config, "DYNAMIC_ARCH"))
        return; /* built for one core: OPENBLAS_CORETYPE would change nothing */
    const char *chosen = openblas_get_corename();
    const char *target = blas_core_upgrade(chosen, blas_cpu_isa());
    if (!target)
        return;
    setenv("OPENBLAS_CORETYPE", target, 1);
    char marker[96];
    snprintf(marker, sizeof marker, "%s", chosen ? chosen : "unknown");
    setenv(REEXEC_MARKER, marker, 1);
    fflush(NULL);
    execv("/proc/self/exe", argv);
    /* exec failed: go on with OpenBLAS's own choice, and say so in the description */
    unsetenv("OPENBLAS_CORETYPE");
}

void blas_core_describe(char *buf, size_t size)
{
    const char *config = openblas_get_config(), *core = openblas_get_corename();
    char library[32] = "OpenBLAS", release[32] = "", version[72];
    if (config)
        sscanf(config, "%31s %31s", library, release);
    snprintf(version, sizeof version, "%s%s%s", library, *release ? " " : "", release);
    const char *forced = getenv("OPENBLAS_CORETYPE"), *was = getenv(REEXEC_MARKER);
    enum blas_isa cpu = blas_cpu_isa();
    int n = snprintf(buf, size, "%s, core %s (%s kernels; the CPU has %s), ", version, core ? core : "?",
                     isa_name(blas_core_isa(core)), isa_name(cpu));
    if (n < 0 || (size_t)n >= size)
        return;
    if (forced && was)
        snprintf(buf + n, size - n, "set by gale: the library chose %s", was);
    else if (forced)
        snprintf(buf + n, size - n, "set by OPENBLAS_CORETYPE=%s in the environment", forced);
    else if (blas_core_upgrade(core, cpu) && config && !strstr(config, "DYNAMIC_ARCH"))
        snprintf(buf + n, size - n, "a build for that core only: narrower than the CPU");
    else
        snprintf(buf + n, size - n, "chosen by the library");
}
