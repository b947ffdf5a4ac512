/* rank_agreement: every MPI rank of a job must run with the same settings. Ranks started with
 * different configs otherwise exchange buffers of different sizes (heap overflows inside
 * MPI_Allreduce), wait in different collectives (hangs), or train on silently different
 * settings. Each rank describes what must agree as canonical "key=value" lines; they are
 * compared by hash against rank 0's, and when any rank differs the first differing key is
 * named on every rank. */
#ifndef GALE_UTIL_RANK_AGREEMENT_H
#define GALE_UTIL_RANK_AGREEMENT_H
#include <jansson.h>
#include <mpi.h>
#include "util/error.h"

/* Appends the scalars of j as sorted "prefix.key=value" lines to *text (realloc'd; *text
 * may start NULL): objects by key, arrays by [index]. */
void rank_agreement_lines(char **text, const char *prefix, const json_t *j);

/* Collective over comm. 0 when every rank's text equals rank 0's; else -1 on every rank with
 * "ranks disagree on WHAT: rank R has KEY=VALUE, rank 0 has KEY=VALUE0" for the lowest
 * rank R that differs and its first differing line. */
int rank_agreement_check(MPI_Comm comm, const char *what, const char *text, gale_error *err);
#endif
