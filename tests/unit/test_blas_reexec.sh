#!/usr/bin/env bash
# test_blas_reexec: `gale` corrects an OpenBLAS that guessed a core narrower than the CPU, end to
# end. A preloaded shim makes openblas_get_corename answer "Prescott" (what Debian's 0.3.21 picks
# on CPUs newer than itself) while OPENBLAS_CORETYPE is unset: gale must re-execute itself with
# OPENBLAS_CORETYPE naming the CPU's core (Haswell on AVX2, SkylakeX on AVX-512), say so in
# train's "blas:" line, and the golden fixtures must still pass on the kernels it chose. With a
# shim that answers Prescott even then, gale re-executes once, not in a loop. A value already in
# the environment (the user's, or the machine's) is kept: then only that is checked.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}" "${GALE_SOURCE:?}"
source "$GALE_SOURCE/tests/train/train_fixture.sh"  # $tmp, the tiny data, write_config
cat > "$tmp/shim.c" <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
char *openblas_get_corename(void)
{
    static char prescott[] = "Prescott";
    if (!getenv("OPENBLAS_CORETYPE") || getenv("SHIM_ALWAYS_PRESCOTT"))
        return prescott;
    return ((char *(*)(void))dlsym(RTLD_NEXT, "openblas_get_corename"))();
}
C
cc -shared -fPIC -o "$tmp/shim.so" "$tmp/shim.c" -ldl
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"

write_config "$tmp/run.yaml" "$tmp/run" 1 2
sed -i 's/warmup: 2/warmup: 0/' "$tmp/run.yaml"
LD_PRELOAD="$tmp/shim.so" "$GALE_BIN" train "$tmp/run.yaml" > "$tmp/train.log"
line=$(grep '^blas:' "$tmp/train.log")
echo "$line"
if [ -n "${OPENBLAS_CORETYPE:-}" ]; then
  grep -q "set by OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE in the environment" <<< "$line" ||
    { echo "FAIL: OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE from the environment not kept"; exit 1; }
  echo "blas_reexec: OPENBLAS_CORETYPE is set here ($OPENBLAS_CORETYPE): kept; the re-execution is not exercised"
  exit 0
fi
if grep -q avx512bw /proc/cpuinfo && grep -q avx512vl /proc/cpuinfo; then want=SkylakeX
elif grep -q avx2 /proc/cpuinfo; then want=Haswell
else want=""; fi
if [ -z "$want" ]; then
  grep -q "core Prescott" <<< "$line" || { echo "FAIL: an SSE-only CPU must keep Prescott"; exit 1; }
  exit 0
fi
grep -q "core $want .*set by gale: the library chose Prescott" <<< "$line" ||
  { echo "FAIL: expected core $want set by gale"; exit 1; }
fixtures=()
for f in "$GALE_SHARED"/golden/*/; do fixtures+=(--fixture "$f"); done
LD_PRELOAD="$tmp/shim.so" "$GALE_BIN" verify "${fixtures[@]}" > "$tmp/verify.txt" ||
  { tail "$tmp/verify.txt"; echo "FAIL: the golden fixtures fail on the $want kernels"; exit 1; }
SHIM_ALWAYS_PRESCOTT=1 LD_PRELOAD="$tmp/shim.so" timeout 60 "$GALE_BIN" train "$tmp/run.yaml" --set run.dir="$tmp/run2" \
  > "$tmp/loop.log" || { echo "FAIL: gale did not finish when the core stays Prescott (a re-exec loop?)"; exit 1; }
grep -q "core Prescott .*set by gale: the library chose Prescott" "$tmp/loop.log"
echo "blas_reexec: Prescott guessed, $want chosen by re-execution; golden fixtures pass on it; no loop"
