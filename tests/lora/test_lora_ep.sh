#!/usr/bin/env bash
# test_lora_ep: LoRA with expert parallelism. The tiny Mixtral base (4 experts) with adapters on
# attention and every expert (w1, w2, w3) and the routers trained whole, on 2 ranks with ep=2
# (each rank holds 2 experts per layer and their adapters; the dense adapters and routers
# replicated) and on 4 ranks with dp=2 x ep=2 (experts' adapter gradients summed over the
# data-parallel group, the dense ones over the world), also with ZeRO-1, gives for 10 steps the
# losses, the adapters (PEFT's one adapter_model.safetensors, gathered to rank 0) and their AdamW
# moments (optimizer-0000N-of-0000M, each rank writing its own) of one rank accumulating the same
# global batch, within 1e-5 relative; stopped at step 5 and resumed on the same layout, or on one
# rank, the run ends where the uninterrupted one does. On the old code `gale train` refused lora
# with parallel.ep > 1.
set -euo pipefail
: "${GALE_SOURCE:?run through ctest}" "${GALE_BIN:?}" "${GALE_BUILD:?}"
source "$GALE_SOURCE/tests/train/mpi_flags.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
source "$GALE_SOURCE/tests/lora/lora_run.sh"
run_mpi() {  # run_mpi RANKS LOG ARGS...
  local n=$1 log=$2
  shift 2
  mpirun "${mpi_flags[@]}" -np "$n" "$GALE_BIN" train "$@" > "$log" 2>&1 ||
    { cat "$log"; echo "FAIL: mpirun -np $n gale train $*"; exit 1; }
}
# a global batch of 8 rows in micro-batches of 2: one rank accumulates 4, ep=2 ranks 2 each,
# dp=2 x ep=2 ranks one each
common=(--set data.micro_batch=2 --set optim.lr=1.0e-3)
for run in one ep2 dpep zero resume cross; do write_lora_config "$tmp/$run.yaml" "$tmp/$run" 10 "train_router: true"; done
"$GALE_BIN" train "$tmp/one.yaml" "${common[@]}" --set data.grad_accum=4 > "$tmp/one.log"
run_mpi 2 "$tmp/ep2.log" "$tmp/ep2.yaml" "${common[@]}" --set data.grad_accum=2 --set parallel.ep=2
grep -q "layout: 2 rank(s) = data parallel 1 x expert parallel 2; a rank holds 2 of 4 experts per layer" "$tmp/ep2.log"
"$GALE_BIN" inspect "$tmp/ep2/checkpoints/step_00000010" | grep -q "^adapters .* on q_proj,v_proj,o_proj,w1,w2,w3, routers trained whole"
run_mpi 4 "$tmp/dpep.log" "$tmp/dpep.yaml" "${common[@]}" --set parallel.ep=2
grep -q "data parallel 2 x expert parallel 2" "$tmp/dpep.log"
# ZeRO-1: each data-parallel rank writes the moments of its part of the adapters; stopped at
# step 5 and resumed, each rank reads its range of them back
run_mpi 4 "$tmp/zero.log" "$tmp/zero.yaml" "${common[@]}" --set parallel.ep=2 --set optim.zero=true --stop-at 5
run_mpi 4 "$tmp/zero.log" "$tmp/zero.yaml" "${common[@]}" --set parallel.ep=2 --set optim.zero=true
grep -q "resuming from .*step 5" "$tmp/zero.log"
grep -q "(ZeRO-1)" "$tmp/zero.log"
run_mpi 2 "$tmp/resume.log" "$tmp/resume.yaml" "${common[@]}" --set data.grad_accum=2 --set parallel.ep=2 --stop-at 5
run_mpi 2 "$tmp/resume.log" "$tmp/resume.yaml" "${common[@]}" --set data.grad_accum=2 --set parallel.ep=2
grep -q "resuming from .*step 5" "$tmp/resume.log"
run_mpi 2 "$tmp/cross.log" "$tmp/cross.yaml" "${common[@]}" --set data.grad_accum=2 --set parallel.ep=2 --stop-at 5
"$GALE_BIN" train "$tmp/cross.yaml" "${common[@]}" --set data.grad_accum=4 > "$tmp/cross.log"
grep -q "resuming from .*step 5" "$tmp/cross.log"
python3 - "$tmp" <<'PY'
import glob, json, struct, sys
import numpy as np
tmp = sys.argv[1]

def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return {k: np.frombuffer(data[t["data_offsets"][0]:t["data_offsets"][1]], dtype=np.float32)
            for k, t in header.items() if k != "__metadata__"}

def stem(dir, name):  # one file, or every rank's files (each tensor once)
    out = {}
    for path in sorted(glob.glob(f"{dir}/{name}*.safetensors")):
        got = tensors(path)
        assert not set(got) & set(out), f"FAIL: {path} repeats {set(got) & set(out)}"
        out.update(got)
    return out

def losses(run):
    return [json.loads(l)["loss"] for l in open(f"{tmp}/{run}/metrics.jsonl") if '"train"' in l]

ref = losses("one")
assert len(ref) == 10, ref
for run in ("ep2", "dpep", "zero", "resume", "cross"):
    got = losses(run)
    n = 5 if run in ("zero", "resume", "cross") else 10  # a resumed run's last 5 steps
    worst = max(abs(a - b) / abs(b) for a, b in zip(got[-n:], ref[-n:]))
    assert len(got) >= n and worst < 1e-5, (run, got, ref)
    print(f"{run}: last {n} losses {' '.join('%.6f' % x for x in got[-n:])}; largest relative difference {worst:.2e}")
    for f in ("adapter_model", "optimizer"):
        a = stem(f"{tmp}/{run}/checkpoints/step_00000010", f)
        b = stem(f"{tmp}/one/checkpoints/step_00000010", f)
        assert a.keys() == b.keys(), f"FAIL: {run}/{f} holds other tensors than one rank's: {set(a) ^ set(b)}"
        rel = max(float(np.max(np.abs(a[k] - b[k]))) / max(float(np.max(np.abs(b[k]))), 1e-30) for k in b)
        assert rel < 1e-5, f"FAIL: {run}/{f} differs from one rank's by {rel:.2e}"
        print(f"{run}: {f}: {len(a)} tensors, largest relative difference {rel:.2e}")
assert len(glob.glob(f"{tmp}/ep2/checkpoints/step_00000010/optimizer-*-of-*.safetensors")) == 2, "FAIL: not a file per rank"
experts = [k for k in tensors(f"{tmp}/ep2/checkpoints/step_00000010/adapter_model.safetensors") if ".experts." in k]
assert len(experts) == 2 * 4 * 3 * 2, len(experts)  # 2 layers x 4 experts x w1/w2/w3 x A/B, from both ranks
PY
echo "LoRA with expert parallelism 2 = one rank accumulating; resumed on ep=2 and on one rank"
