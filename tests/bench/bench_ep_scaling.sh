#!/usr/bin/env bash
# bench_ep_scaling: `gale train` with expert parallelism on 1, 2, 4 and 8 ranks of this machine:
# step time, tokens/s and the share of the step spent inside MPI calls (all-to-all, gradient
# all-reduce or reduce-scatter + all-gather), with the bytes rank 0 sends per step, from
# metrics.jsonl (comm_s, comm_bytes). The same global batch (64 rows x 16 tokens) and model at
# every size: a Mixtral of 4 layers, hidden 128, FFN 256, 8 experts top-2, vocab 32000; R ranks
# run parallel.ep = R (8 / R experts per rank per layer) and grad_accum 8 / R micro-batches of
# 8 rows each. Threads: backend.threads 1 per rank.
#
# On a machine with fewer cores than ranks (the 2-core development VM: mpirun
# --oversubscribe), ranks take turns on the cores: the step time then measures the oversubscribed
# machine, and the time "in MPI" includes waiting for ranks that are descheduled, so the
# communication share is an upper bound of what the exchanges cost, not a network measurement.
#
#   bash tests/bench/bench_ep_scaling.sh [--build DIR] [--ranks "1 2 4 8"] [--steps N] [--zero]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(cd "$here/../.." && pwd)"
build="${GALE_BUILD:-$source_dir/build}"
ranks_list="1 2 4 8"
steps=8
zero=false
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --ranks) ranks_list="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --zero) zero=true; shift ;;
    *) echo "bench_ep_scaling: unknown option $1" >&2; exit 2 ;;
  esac
done
command -v mpirun >/dev/null || { echo "bench_ep_scaling: mpirun is not installed" >&2; exit 1; }
mpi_flags=(--oversubscribe)
[ "$(id -u)" -ne 0 ] || mpi_flags+=(--allow-run-as-root)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$build/test_trainer" --make-data "$tmp/data"
echo "machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(date -u +%F), load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $ranks_list; do
  cat > "$tmp/ep$r.yaml" <<YAML
model:
  model_type: mixtral
  vocab_size: 32000
  hidden_size: 128
  intermediate_size: 256
  num_hidden_layers: 4
  num_attention_heads: 4
  num_key_value_heads: 2
  num_local_experts: 8
  num_experts_per_tok: 2
  max_position_embeddings: 64
data:
  sources: [$tmp/data]
  seq_len: 16
  micro_batch: 8
  grad_accum: $((8 / r))
optim:
  lr: 1.0e-3
  zero: $zero
run:
  steps: $steps
  seed: 3
  eval_every: 0
  checkpoint_every: 0
  dir: $tmp/run$r
backend:
  threads: 1
parallel:
  ep: $r
YAML
  mpirun "${mpi_flags[@]}" -np "$r" "$build/gale" train "$tmp/ep$r.yaml" > "$tmp/ep$r.log" 2>&1 ||
    { cat "$tmp/ep$r.log"; echo "bench_ep_scaling: $r ranks failed" >&2; exit 1; }
done
python3 - "$tmp" "$ranks_list" <<'PY'
import json, statistics, sys
tmp, ranks = sys.argv[1], [int(r) for r in sys.argv[2].split()]
print(f"{'ranks':>5} {'ep':>3} {'step s':>8} {'tok/s':>8} {'in MPI':>7}  {'all-to-all':>10} {'grad reduce':>11}  "
      f"bytes/step from rank 0: all-to-all, all-reduce, reduce-scatter, all-gather")
base = None
for r in ranks:
    recs = [x for x in map(json.loads, open(f"{tmp}/run{r}/metrics.jsonl")) if x.get("kind") == "train"]
    timed = recs[2:] if len(recs) > 3 else recs  # the first steps warm up (allocations grow)
    step = statistics.median(x["step_s"] for x in timed)
    tok = statistics.median(x["tokens_per_s"] for x in timed)
    a2a = statistics.median(x["comm_s"]["alltoall"] for x in timed)
    red = statistics.median(sum(x["comm_s"][k] for k in ("allreduce", "reduce_scatter", "allgather")) for x in timed)
    b = timed[-1]["comm_bytes"]
    base = base or step
    print(f"{r:>5} {r:>3} {step:>8.3f} {tok:>8.0f} {100 * (a2a + red) / step:>6.1f}%  {100 * a2a / step:>9.1f}% "
          f"{100 * red / step:>10.1f}%  {b['alltoall']:,} {b['allreduce']:,} {b['reduce_scatter']:,} {b['allgather']:,}")
PY
