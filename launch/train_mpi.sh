#!/usr/bin/env bash
# Trains on several ranks of this machine (or of a hostfile's machines):
#   launch/train_mpi.sh RANKS RUN.yaml [--set section.key=value ...]
#   MPI_HOSTFILE=launch/hostfile.example launch/train_mpi.sh 16 RUN.yaml
# World = data parallel x expert parallel (parallel.ep in RUN.yaml); each rank shares its
# node's cores with the node's other ranks (and will drive the GPU of its node-local rank).
# A rank that fails or dies ends the job: gale aborts the others, mpirun ends the rest.
set -euo pipefail
n=${1:?usage: launch/train_mpi.sh RANKS RUN.yaml [--set section.key=value ...]}
shift
gale=${GALE:-$(dirname "$0")/../build/gale}
flags=(--bind-to none)
[ "$(id -u)" -ne 0 ] || flags+=(--allow-run-as-root)
if [ -n "${MPI_HOSTFILE:-}" ]; then
  flags+=(--hostfile "$MPI_HOSTFILE")
elif [ "$n" -gt "$(nproc)" ]; then
  flags+=(--oversubscribe)
fi
exec mpirun "${flags[@]}" -np "$n" "$gale" train "$@"
