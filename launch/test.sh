#!/usr/bin/env bash
# Builds gale and runs its test suite with ctest.
#   launch/test.sh            release build in build/
#   launch/test.sh --sanitize ASan + UBSan build in build-sanitize/
# GALE_NO_SKIPS=1 fails the run when any test was skipped (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

build=build
flags=()
if [ "${1:-}" = "--sanitize" ]; then
  build=build-sanitize
  flags=(-DGALE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
  # The CPU kernels' OpenMP runtime and Open MPI keep allocations for the process's life.
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:${ASAN_OPTIONS:-}"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
fi
jobs=$(nproc)
cmake -S . -B "$build" "${flags[@]}" >/dev/null
cmake --build "$build" -j"$jobs"
# OpenMP inside each test: one thread per test keeps `ctest -j` from oversubscribing the cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# A test whose peer is missing reports Skipped; GALE_NO_SKIPS=1 (CI, which installs every
# peer) makes any skipped test a failure of the run.
log="$build/ctest.log"
ctest --test-dir "$build" -j"$jobs" --output-on-failure --timeout 600 2>&1 | tee "$log"
# The cuda/ tests need a GPU, which no CI machine has: their skip is not a missing peer.
skipped=$(grep "(Skipped)" "$log" | grep -v " cuda/" || true)
if [ -n "${GALE_NO_SKIPS:-}" ] && [ -n "$skipped" ]; then
  echo "test: GALE_NO_SKIPS is set but these tests were skipped (a peer is missing):" >&2
  echo "$skipped" >&2
  exit 1
fi
