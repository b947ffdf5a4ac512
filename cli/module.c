/* The entry points of libgale_commands.so beside the cmd_*.c it holds: what every heavy
 * command does first, and `gale --version`, which asks the backends. */
#include <stdio.h>

#include "cli/commands.h"
#include "model/backend.h"
#include "model/cpu/blas_core.h"
#include "model/cpu/blas_pool.h"

void gale_commands_init(char **argv)
{
    blas_core_select(argv);
    blas_pool_stop();
}

/* What this gale is and what it can run on: the version, the BLAS kernels, and whether the
 * CUDA backend opens here (its module, a driver, a device). */
int cmd_version(int argc, char **argv)
{
    char blas[256];
    blas_core_describe(blas, sizeof blas);
    printf("gale %s\nbackends: cpu (fp32, bf16)", GALE_VERSION);
    gale_error err;
    struct gale_backend *cuda = gale_backend_create("cuda", GALE_BF16, &err);
    if (cuda)
        printf(", cuda (fp32, bf16)\n");
    else
        printf("; %s\n", err.msg);
    gale_backend_free(cuda);
    printf("blas: %s\n", blas);
    return 0;
}
