/* test_blas_core: the OpenBLAS core gale runs is as wide as the CPU's vector units. The decision
 * (which core to force when the library chose a narrower one) is checked on a table of cores and
 * CPUs; then this program selects as `gale` does, first thing in main (re-executing itself when
 * needed), and the core that runs must not be narrower than the CPU, unless the environment set
 * OPENBLAS_CORETYPE (the user's or the machine's choice, which gale keeps). Fails on a CPU newer
 * than the OpenBLAS build when the selection is missing (Debian's 0.3.21 picks Prescott on
 * Intel family 6 model 207). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model/cpu/blas_core.h"

char *openblas_get_corename(void);

static void check_upgrade(const char *chosen, enum blas_isa cpu, const char *want)
{
    const char *got = blas_core_upgrade(chosen, cpu);
    CHECK_MSG(want ? got && !strcmp(got, want) : !got, "%s on ISA %d: got %s, want %s", chosen, cpu,
              got ? got : "(keep)", want ? want : "(keep)");
}

int main(int argc, char **argv)
{
    (void)argc;
    int user_set = getenv("OPENBLAS_CORETYPE") && !getenv("GALE_OPENBLAS_CORETYPE_SET");
    blas_core_select(argv);

    check_upgrade("Prescott", BLAS_ISA_AVX512, "SkylakeX");
    check_upgrade("Prescott", BLAS_ISA_AVX2, "Haswell");
    check_upgrade("Core2", BLAS_ISA_AVX, "Sandybridge");
    check_upgrade("Nehalem", BLAS_ISA_SSE, NULL);
    check_upgrade("Haswell", BLAS_ISA_AVX512, "SkylakeX");
    check_upgrade("Zen", BLAS_ISA_AVX2, NULL);
    check_upgrade("zen", BLAS_ISA_AVX2, NULL);
    check_upgrade("SkylakeX", BLAS_ISA_AVX512, NULL);
    check_upgrade("Cooperlake", BLAS_ISA_AVX512, NULL);
    check_upgrade("SkylakeX", BLAS_ISA_AVX2, NULL); /* never narrower than chosen */
    check_upgrade("Sandybridge", BLAS_ISA_AVX2, "Haswell");
    check_upgrade("Unknown", BLAS_ISA_AVX2, "Haswell");
    CHECK_MSG(blas_core_isa(NULL) == BLAS_ISA_SSE, "no name is SSE");

    char line[256];
    blas_core_describe(line, sizeof line);
    printf("blas: %s\n", line);
    const char *core = openblas_get_corename();
    CHECK_MSG(core && strstr(line, core), "the description names the core %s: %s", core, line);
    if (user_set)
        printf("OPENBLAS_CORETYPE=%s was set in the environment: kept, not checked against the CPU\n",
               getenv("OPENBLAS_CORETYPE"));
    else
        CHECK_MSG(!blas_core_upgrade(core, blas_cpu_isa()),
                  "OpenBLAS runs core %s, narrower than this CPU's vector units (%s)", core, line);
    return check_report("test_blas_core");
}
