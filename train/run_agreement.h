/* run_agreement: before a multi-rank `gale train` does anything together, every rank checks
 * that it has rank 0's effective run config, model layout (the config.json it built) and
 * data (each source's manifest.json), and the job ends naming the first key that differs. */
#ifndef GALE_TRAIN_RUN_AGREEMENT_H
#define GALE_TRAIN_RUN_AGREEMENT_H
#include "model/config.h"
#include "train/run_config.h"
#include "util/error.h"

/* Collective over MPI_COMM_WORLD; 0 when all ranks agree, else -1 on every rank. */
int run_agreement_check(const gale_run_config *cfg, const struct model_config *mc, gale_error *err);
#endif
