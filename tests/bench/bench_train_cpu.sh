#!/usr/bin/env bash
# Training step on the CPU, gale vs PyTorch, side by side in one run: the same model shape,
# the same weights and tokens (written once by bench_torch_step.py make-inputs and loaded by
# every side), fp32, batch 4 x seq 256, the same thread count K on every side: OMP_NUM_THREADS=K
# and OPENBLAS_NUM_THREADS=K in the environment, torch.set_num_threads(K) on the PyTorch sides,
# an OpenMP team of K on gale's side (whose CPU backend splits products over it, each block a
# single-threaded BLAS call).
# The PyTorch peers (--peers): torch2-compile (torch 2.x from PyPI, MKL, torch.compile with
# Inductor), torch2 (the same, eager), torch1 (Debian's python3-torch 1.13, OpenBLAS, eager).
# torch 2.x lives in a virtual environment made by tests/bench/setup_torch2.sh (default
# ../venv-torch2 beside the checkout; --torch2-python or GALE_TORCH2_PYTHON names another); a
# peer whose Python has no torch is left out with a note.
# A step is forward + backward + clip to 1.0 + AdamW; warm-up steps are excluded (a compiled
# peer takes at least 3: compilation). The sides alternate in rounds (peers, gale, peers, gale,
# ...: each round a fresh process with its own warm-up), so that load from other processes on a
# shared machine falls on all alike. Reported per side: tokens/s of the best timed step over
# all rounds (best-of-N: the least disturbed by other load) and of the median; the ratio
# gale / peer of both. The load average is printed before and after, and the BLAS each side
# ran (OpenBLAS core, or MKL). The first step's loss of every side must agree (they train the
# same thing), else it fails.
# Every side runs with OMP_WAIT_POLICY=PASSIVE by default: torch's idle OpenMP workers otherwise
# spin while OpenBLAS's own threads run its GEMMs, which on 2 shared cores costs torch up to
# half its speed at 2 threads (--omp-wait-policy default keeps libgomp's default).
#
#   bash tests/bench/setup_bench.sh       # once: Debian's python3-torch
#   bash tests/bench/setup_torch2.sh      # once: torch 2.x from PyPI in ../venv-torch2
#   bash tests/bench/bench_train_cpu.sh [--build DIR] [--rounds R] [--steps N] [--warmup W]
#                                       [--threads "1 2"] [--models "mixtral mistral"]
#                                       [--peers "torch2-compile torch2 torch1"]
#                                       [--torch2-python PY] [--batch B] [--seq T]
#                                       [--omp-wait-policy P] [--mask-fraction F]
# --mask-fraction F ignores the first F of each row's targets on every side (an SFT prompt):
# gale's head then skips those positions; the PyTorch peers compute every position's logits
# and ignore them in the loss, as transformers does.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(cd "$here/../.." && pwd)"
build="${GALE_BUILD:-$source_dir/build}"
rounds=3
steps=4
warmup=1
thread_counts="1 2"
models="mixtral mistral"
peers="torch2-compile torch2 torch1"
batch=4
seq=256
wait_policy=PASSIVE
mask_fraction=0
torch1_python=/usr/bin/python3   # Debian's python3-torch lives here, not in a pyenv on PATH
torch2_python="${GALE_TORCH2_PYTHON:-$source_dir/../venv-torch2/bin/python}"

while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --threads) thread_counts="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --peers) peers="$2"; shift 2 ;;
    --torch2-python) torch2_python="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --seq) seq="$2"; shift 2 ;;
    --omp-wait-policy) wait_policy="$2"; shift 2 ;;
    --mask-fraction) mask_fraction="$2"; shift 2 ;;
    -h|--help) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_train_cpu: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

gale_step="$build/bench_train_step"
if [ ! -x "$gale_step" ]; then
  echo "bench_train_cpu: $gale_step not found: build first (cmake --build $build --target bench_train_step) or pass --build DIR" >&2
  exit 1
fi
peer_command() {  # PEER: python, script and the peer's own options
  case "$1" in
    torch1) echo "$torch1_python $here/bench_torch_step.py" ;;
    torch2) echo "$torch2_python $here/bench_torch_step.py" ;;
    torch2-compile) echo "$torch2_python $here/bench_torch_step.py --compile" ;;
    *) echo "bench_train_cpu: unknown peer $1 (torch2-compile, torch2, torch1)" >&2; return 1 ;;
  esac
}
present=""
for peer in $peers; do
  read -r python _ <<< "$(peer_command "$peer")"
  if "$python" -c "import torch" 2>/dev/null; then
    present="$present $peer"
  else
    echo "bench_train_cpu: leaving out $peer: $python cannot import torch (setup_bench.sh, setup_torch2.sh)" >&2
  fi
done
peers="${present# }"
[ -n "$peers" ] || { echo "bench_train_cpu: no PyTorch peer can run" >&2; exit 1; }
read -r make_python _ <<< "$(peer_command "${peers%% *}")"
for model in $models; do
  [ -f "$here/configs/bench-$model.json" ] || { echo "bench_train_cpu: no config $here/configs/bench-$model.json" >&2; exit 1; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/gale-bench-train.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "bench_train_cpu: $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -m), $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "bench_train_cpu: batch $batch x seq $seq, fp32, $rounds rounds per side of $warmup warm-up + $steps timed steps, OMP_WAIT_POLICY $wait_policy, mask fraction $mask_fraction; peers: $peers"
echo "bench_train_cpu: load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for model in $models; do
  "$make_python" "$here/bench_torch_step.py" make-inputs --config "$here/configs/bench-$model.json" \
    --batch "$batch" --seq "$seq" --out "$work/$model"
  for threads in $thread_counts; do
    for round in $(seq 1 "$rounds"); do
      for side in $peers gale; do
        echo "bench_train_cpu: $model, $threads thread(s), round $round, $side ..." >&2
        if [ "$side" = gale ]; then
          cmd=("$gale_step" --dir "$work/$model")
        else
          read -r -a peer_cmd <<< "$(peer_command "$side")"
          cmd=("${peer_cmd[0]}" "${peer_cmd[1]}" run "${peer_cmd[@]:2}" --dir "$work/$model")
        fi
        policy=()
        [ "$wait_policy" = default ] || policy=(OMP_WAIT_POLICY="$wait_policy")
        env "${policy[@]}" OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads" \
          "${cmd[@]}" --steps "$steps" --warmup "$warmup" --threads "$threads" --mask-fraction "$mask_fraction" \
          >> "$work/$model.$threads.$side.jsonl"
      done
    done
  done
done
echo "bench_train_cpu: load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

/usr/bin/python3 - "$work" "$models" "$thread_counts" "$peers" <<'EOF'
import json, statistics, sys

work, models, thread_counts, peers = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
LOSS_TOL = 1e-4  # fp32 vs fp32 from identical weights and tokens
header = "| model | threads | gale tokens/s (best / median) |"
for peer in peers:
    header += f" {peer} tokens/s | gale / {peer} (best, median) |"
header += " step-1 loss gale | step-1 loss of the peers |"
print(header)
print("|" + " --- |" * (header.count("|") - 1))
mismatches = 0
sides = {}
def combined(path):
    """One side: its first run, and the best and the median of every timed step of every round."""
    runs = [json.loads(line) for line in open(path)]
    times = sorted(t for run in runs for t in run["step_times"])
    return runs[0], min(times), statistics.median(times), len(times)


for model in models:
    for threads in thread_counts:
        gale_run, gale_best, gale_median, n = combined(f"{work}/{model}.{threads}.gale.jsonl")
        tokens = gale_run["batch"] * gale_run["seq"]
        sides["gale"] = gale_run
        row = f"| {model} | {threads} | {tokens / gale_best:.0f} / {tokens / gale_median:.0f} |"
        peer_losses = []
        for peer in peers:
            run, best, median, _ = combined(f"{work}/{model}.{threads}.{peer}.jsonl")
            sides[peer] = run
            row += f" {tokens / best:.0f} / {tokens / median:.0f} | {best / gale_best:.2f}x, {median / gale_median:.2f}x |"
            peer_losses.append(f"{run['losses'][0]:.6f}")
            mismatches += abs(gale_run["losses"][0] - run["losses"][0]) / abs(run["losses"][0]) > LOSS_TOL
        print(row + f" {gale_run['losses'][0]:.6f} | {', '.join(peer_losses)} |")
print(f"(tokens/s from the best and the median of {n} timed steps per side; step-1 losses of the first round)")
for side, run in sides.items():
    print(f"  {side}: {run['impl']}, BLAS {run.get('blas', '?')}")
if mismatches:
    print(f"bench_train_cpu: the first step's loss differs by more than {LOSS_TOL:g} relative in {mismatches} run(s): "
          "the sides do not compute the same step, the timings do not compare", file=sys.stderr)
    sys.exit(1)
EOF
