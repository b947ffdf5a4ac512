/* cpu_backend: the fp32 CPU backend the unit tests run on, created once per process. */
#ifndef GALE_TESTS_UNIT_CPU_BACKEND_H
#define GALE_TESTS_UNIT_CPU_BACKEND_H

#include <stdio.h>
#include <stdlib.h>

#include "model/ops.h"

/* Products whose operands are all fp32. */
#define F32_GEMM ((struct gale_gemm_types){GALE_F32, GALE_F32, GALE_F32})

static inline struct gale_backend *cpu_backend(void)
{
    static struct gale_backend *be;
    if (!be) {
        gale_error err;
        be = gale_backend_create("cpu", GALE_F32, &err);
        if (!be) {
            fprintf(stderr, "%s\n", err.msg);
            exit(1);
        }
    }
    return be;
}

#endif
