#!/usr/bin/env bash
# Builds gale and runs its test suite with ctest.
#   launch/test.sh            release build in build/
#   launch/test.sh --sanitize ASan + UBSan build in build-sanitize/
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
ctest --test-dir "$build" -j"$jobs" --output-on-failure --timeout 600
