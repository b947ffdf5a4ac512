#!/usr/bin/env bash
# Profiles gale's CPU training step (bench_train_step on the benchmark's random model and
# batch) with perf and prints where the time of the timed steps goes, per ops-table kernel and
# per model stage (perf_breakdown.py). Needs perf and Debian's python3-torch (setup_bench.sh).
#
#   bash tests/bench/profile_train_step.sh [--build DIR] [--model mixtral|mistral]
#        [--threads K] [--steps N] [--warmup W] [--batch B] [--seq T] [--freq HZ] [--keep DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(cd "$here/../.." && pwd)"
build="${GALE_BUILD:-$source_dir/build}"
model=mixtral
threads=1
steps=3
warmup=1
batch=4
seq=256
freq=400
keep=""
python=/usr/bin/python3

while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --seq) seq="$2"; shift 2 ;;
    --freq) freq="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "profile_train_step: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

gale_step="$build/bench_train_step"
[ -x "$gale_step" ] || { echo "profile_train_step: $gale_step not found: build first or pass --build DIR" >&2; exit 1; }
command -v perf > /dev/null || { echo "profile_train_step: perf not found: run tests/bench/setup_bench.sh" >&2; exit 1; }
config="$here/configs/bench-$model.json"
[ -f "$config" ] || { echo "profile_train_step: no config $config" >&2; exit 1; }

if [ -n "$keep" ]; then
  work="$keep"
  mkdir -p "$work"
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/gale-profile.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
fi
"$python" "$here/bench_torch_step.py" make-inputs --config "$config" --batch "$batch" --seq "$seq" --out "$work/inputs"
# -k monotonic: sample times on CLOCK_MONOTONIC, the clock of the bench's timed window
OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads" \
  perf record -q -k monotonic -F "$freq" --call-graph dwarf,65528 -o "$work/perf.data" \
  "$gale_step" --dir "$work/inputs" --steps "$steps" --warmup "$warmup" --threads "$threads" > "$work/bench.json"
echo "profile_train_step: $model, batch $batch x seq $seq, $threads thread(s); load average $(cut -d' ' -f1-3 /proc/loadavg)"
perf script -i "$work/perf.data" -F tid,time,ip,sym 2> /dev/null | "$python" "$here/perf_breakdown.py" --bench "$work/bench.json"
