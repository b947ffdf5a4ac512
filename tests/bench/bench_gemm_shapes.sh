#!/usr/bin/env bash
# The products of the CPU training-step benchmark's Mistral, gale's OpenBLAS sgemm against torch's
# (MKL in torch 2.x from PyPI) on the same shapes and transpositions, one thread each, in thread
# CPU time (best of R): which of the step's products gale wins or loses on. With Debian's BLIS
# installed (libblis-openmp-dev), the same program built against BLIS is a third column: a BLAS
# that picks its kernels by CPU features, the other way to a fast sgemm than OpenBLAS's.
#
#   bash tests/bench/bench_gemm_shapes.sh [--build DIR] [--torch2-python PY] [--repeats R]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(cd "$here/../.." && pwd)"
build="${GALE_BUILD:-$source_dir/build}"
python="${GALE_TORCH2_PYTHON:-$source_dir/../venv-torch2/bin/python}"
repeats=6
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --torch2-python) python="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_gemm_shapes: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$build/bench_gemm_shapes" ] || { echo "bench_gemm_shapes: build $build/bench_gemm_shapes first" >&2; exit 1; }
"$python" -c "import torch" 2> /dev/null || { echo "bench_gemm_shapes: $python cannot import torch (setup_torch2.sh)" >&2; exit 1; }
echo "bench_gemm_shapes: $(date -u '+%Y-%m-%d %H:%M UTC'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
blis_args=()
blis_dir=/usr/lib/x86_64-linux-gnu/blis-openmp
if [ -f /usr/include/x86_64-linux-gnu/blis-openmp/cblas.h ] && [ -f "$blis_dir/libblis.so" ]; then
  cc -O2 -DBENCH_GEMM_BLIS -I/usr/include/x86_64-linux-gnu/blis-openmp "$here/bench_gemm_shapes.c" \
     -o "$build/bench_gemm_shapes_blis" -L"$blis_dir" -Wl,-rpath,"$blis_dir" -lblis -lm
  OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1 "$build/bench_gemm_shapes_blis" --repeats "$repeats" > "$build/bench_gemm_shapes_blis.jsonl"
  blis_args=(--blis "$build/bench_gemm_shapes_blis.jsonl")
else
  echo "bench_gemm_shapes: no BLIS column (apt-get install libblis-openmp-dev to add one)"
fi
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$build/bench_gemm_shapes" --repeats "$repeats" |
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$python" "$here/bench_gemm_shapes_torch.py" --repeats "$repeats" "${blis_args[@]}"
