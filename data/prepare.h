/* prepare: the `gale prepare` pipeline, from raw inputs to a dataset folder of shards.
 *   pass 1 (read):  every rank reads its share of the input (files in order, about equal
 *                   bytes per rank; a big uncompressed JSONL or lines file is cut into byte
 *                   ranges at the share boundaries), rejects malformed and out-of-bounds
 *                   records, and computes each document's exact hash, shingle set and LSH
 *                   band keys on all cores; dedup_resolve then decides duplicates globally.
 *   pass 2 (write): the files are read again; kept documents are tokenized on all cores
 *                   (BOS + text + EOS, or the chat template with its loss mask), split into
 *                   train/val by a hash of their text, packed (concat or best_fit) and
 *                   written to shards, each rank its own.
 * Two passes keep memory at the per-document dedup state (see data/dedup.h), whatever the
 * corpus size. Everything is written into OUT.partial/; rank 0 writes report.json and then
 * manifest.json there and renames the folder to OUT, so OUT either does not exist or is
 * complete. A killed run leaves only OUT.partial, which the next run removes. */
#ifndef GALE_DATA_PREPARE_H
#define GALE_DATA_PREPARE_H

#include <mpi.h>

#include "data/prepare_config.h"
#include "util/error.h"

/* Collective over comm. Returns 0, or -1 with the message of this rank's failure (or of
 * the rank that failed, in general terms). */
int prepare_run(const prepare_config *cfg, MPI_Comm comm, gale_error *err);

#endif
