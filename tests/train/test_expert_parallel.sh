#!/usr/bin/env bash
# test_expert_parallel: expert parallelism against one rank over the same global batch (the
# program is tests/unit/test_expert_parallel.c: losses of 10 AdamW steps and the final weights
# within 1e-5 relative; experts that get no token have exactly zero gradients). Layouts:
# ep=2, ep=4, dp=2 x ep=2, ep=8 of a tiny Mixtral with 8 experts, and ep=2 with each layer's
# forward (and its all-to-all) recomputed in the backward; moe.aux_scope global (the expert
# counts of the whole global batch in the load-balancing loss) on dp=2 and dp=2 x ep=2, which
# must also train differently from the micro-batch scope; a capacity factor of 1 (ep=2,
# dp=2 x ep=2) dropping the same slots as one rank; ZeRO-1 with ep (dp=2 x ep=2, ep=4: the
# buckets reduce-scattered, each rank updating its pieces, all-gathered) with the buckets
# reduced during the backward, bit-identical to reducing them after it.
set -euo pipefail
: "${GALE_BUILD:?run through ctest, or set GALE_SOURCE and GALE_BUILD}" "${GALE_SOURCE:?}"
source "$GALE_SOURCE/tests/train/mpi_flags.sh"
export OMP_NUM_THREADS=1
for layout in "2 2" "4 4" "4 2" "8 8" "2 2 recompute" "2 1 global" "4 2 global" "2 2 capacity" "4 2 capacity" "4 2 zero overlap" "4 4 zero"; do
  set -- $layout
  log=$(mktemp)
  if ! mpirun "${mpi_flags[@]}" -np "$1" "$GALE_BUILD/test_expert_parallel" "${@:2}" > "$log" 2>&1; then
    cat "$log"; rm -f "$log"
    echo "FAIL: $1 ranks with parallel.ep ${*:2} differ from one rank"; exit 1
  fi
  grep -E "^step 10|largest|apart|bit" "$log" | head -5
  rm -f "$log"
done
echo "expert parallelism: ep=2, ep=4, dp=2 x ep=2, ep=8, ep=2 recomputing aux_scope global (dp=2, dp=2 x ep=2) a capacity (ep=2, dp=2 x ep=2) and ZeRO-1 (dp=2 x ep=2 overlapped, ep=4) match one rank"
