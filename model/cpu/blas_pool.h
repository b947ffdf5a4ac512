/* blas_pool: stops OpenBLAS's own thread pool. gale never uses it: the CPU backend splits its
 * products over OpenMP threads, each block a single-threaded BLAS call (model/cpu/ops_cpu.c).
 * OpenBLAS starts its pool when the library loads, before main, and each of its threads spins
 * (sched_yield) for about 0.1 s on any idle core before sleeping: CPU that every gale
 * subcommand, training or not, would burn for nothing. */
#ifndef GALE_MODEL_CPU_BLAS_POOL_H
#define GALE_MODEL_CPU_BLAS_POOL_H

/* Sets OpenBLAS to one thread and joins its pool's threads. Call first thing in main. */
void blas_pool_stop(void);

#endif
