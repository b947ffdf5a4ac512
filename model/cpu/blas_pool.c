#include "model/cpu/blas_pool.h"

#include <cblas.h>

/* OpenBLAS's exported pool shutdown (its fork handler uses it). cblas.h does not declare it.
 * Setting one thread alone is not enough: the threads already started keep spinning until
 * their timeout, and OPENBLAS_NUM_THREADS is read before main, so setenv comes too late. */
int blas_thread_shutdown_(void);

void blas_pool_stop(void)
{
    openblas_set_num_threads(1);
    blas_thread_shutdown_();
}
