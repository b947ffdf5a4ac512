#!/usr/bin/env bash
# Training step on the CPU, gale vs PyTorch, side by side in one run: the same model shape,
# the same weights and tokens (written once by bench_torch_step.py make-inputs and loaded by
# both), fp32, batch 4 x seq 256, the same thread count K on both sides: OMP_NUM_THREADS=K and
# OPENBLAS_NUM_THREADS=K in the environment, torch.set_num_threads(K) on the PyTorch side (whose
# GEMMs run on OpenBLAS's pool of K threads), an OpenMP team of K on gale's side (whose CPU
# backend splits products over it, each block a single-threaded BLAS call).
# A step is forward + backward + clip to 1.0 + AdamW; warm-up steps are excluded and the median
# of the timed steps is reported as tokens per second, with the ratio gale / torch. The sides
# alternate in rounds (torch, gale, torch, gale, ...: each round a fresh process with its own
# warm-up), so that load from other processes on a shared machine falls on both alike; the
# median is over the timed steps of all rounds. The load average is printed before and after.
# The first step's loss of both sides must agree (they train the same thing), else it fails.
# Both sides run with OMP_WAIT_POLICY=PASSIVE by default: torch's idle OpenMP workers otherwise
# spin while OpenBLAS's own threads run its GEMMs, which on 2 shared cores costs torch up to
# half its speed at 2 threads (--omp-wait-policy default keeps libgomp's default).
#
#   bash tests/bench/setup_bench.sh       # once: Debian's python3-torch
#   bash tests/bench/bench_train_cpu.sh [--build DIR] [--rounds R] [--steps N] [--warmup W]
#                                       [--threads "1 2"] [--models "mixtral mistral"]
#                                       [--batch B] [--seq T] [--omp-wait-policy P]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(cd "$here/../.." && pwd)"
build="${GALE_BUILD:-$source_dir/build}"
rounds=3
steps=4
warmup=1
thread_counts="1 2"
models="mixtral mistral"
batch=4
seq=256
wait_policy=PASSIVE
python=/usr/bin/python3   # Debian's python3-torch lives here, not in a pyenv on PATH

while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --threads) thread_counts="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --seq) seq="$2"; shift 2 ;;
    --omp-wait-policy) wait_policy="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_train_cpu: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

gale_step="$build/bench_train_step"
if [ ! -x "$gale_step" ]; then
  echo "bench_train_cpu: $gale_step not found: build first (cmake --build $build --target bench_train_step) or pass --build DIR" >&2
  exit 1
fi
if ! "$python" -c "import torch" 2>/dev/null; then
  echo "bench_train_cpu: $python cannot import torch: run tests/bench/setup_bench.sh" >&2
  exit 1
fi
for model in $models; do
  [ -f "$here/configs/bench-$model.json" ] || { echo "bench_train_cpu: no config $here/configs/bench-$model.json" >&2; exit 1; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/gale-bench-train.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "bench_train_cpu: $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -m), $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "bench_train_cpu: batch $batch x seq $seq, fp32, $rounds rounds per side of $warmup warm-up + $steps timed steps, median, OMP_WAIT_POLICY $wait_policy"
echo "bench_train_cpu: load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for model in $models; do
  "$python" "$here/bench_torch_step.py" make-inputs --config "$here/configs/bench-$model.json" \
    --batch "$batch" --seq "$seq" --out "$work/$model"
  for threads in $thread_counts; do
    for round in $(seq 1 "$rounds"); do
      for side in torch gale; do
        echo "bench_train_cpu: $model, $threads thread(s), round $round, $side ..." >&2
        if [ "$side" = torch ]; then
          cmd=("$python" "$here/bench_torch_step.py" run --dir "$work/$model")
        else
          cmd=("$gale_step" --dir "$work/$model")
        fi
        policy=()
        [ "$wait_policy" = default ] || policy=(OMP_WAIT_POLICY="$wait_policy")
        env "${policy[@]}" OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads" \
          "${cmd[@]}" --steps "$steps" --warmup "$warmup" --threads "$threads" \
          >> "$work/$model.$threads.$side.jsonl"
      done
    done
  done
done
echo "bench_train_cpu: load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

"$python" - "$work" "$models" "$thread_counts" <<'EOF'
import json, statistics, sys

work, models, thread_counts = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
LOSS_TOL = 1e-4  # fp32 vs fp32 from identical weights and tokens
header = "| model | threads | torch tokens/s | gale tokens/s | gale / torch | step-1 loss torch | step-1 loss gale | last loss torch | last loss gale |"
print(header)
print("|" + " --- |" * (header.count("|") - 1))
mismatches = 0
def combined(path):
    """The runs of one side: every timed step of every round, and the first round's losses."""
    runs = [json.loads(line) for line in open(path)]
    times = sorted(t for run in runs for t in run["step_times"])
    return runs[0], statistics.median(times), len(times)


for model in models:
    for threads in thread_counts:
        (torch_run, torch_median, n), (gale_run, gale_median, _) = (
            combined(f"{work}/{model}.{threads}.{side}.jsonl") for side in ("torch", "gale"))
        tokens = torch_run["batch"] * torch_run["seq"]
        first = abs(gale_run["losses"][0] - torch_run["losses"][0]) / abs(torch_run["losses"][0])
        mismatches += first > LOSS_TOL
        print(f"| {model} | {threads} | {tokens / torch_median:.0f} | {tokens / gale_median:.0f} | "
              f"{torch_median / gale_median:.2f}x | {torch_run['losses'][0]:.6f} | {gale_run['losses'][0]:.6f} | "
              f"{torch_run['losses'][-1]:.6f} | {gale_run['losses'][-1]:.6f} |")
print(f"(sides: {torch_run['impl']}, {gale_run['impl']}; tokens/s from the median of {n} timed steps per side; "
      f"losses of the first round's first and last step)")
if mismatches:
    print(f"bench_train_cpu: the first step's loss differs by more than {LOSS_TOL:g} relative in {mismatches} run(s): "
          "the two sides do not compute the same step, the timings do not compare", file=sys.stderr)
    sys.exit(1)
EOF
