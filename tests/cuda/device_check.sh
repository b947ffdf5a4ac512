#!/usr/bin/env bash
# The CUDA backend's whole check in one run on a GPU machine (H100/H200, sm_90), from the
# project root, after tests/cuda/pack_device_inputs.sh filled .device/ here:
#
#   bash tests/cuda/device_check.sh            (the device tool: carry .device)
#
# Stages, each with its own time limit, its log in $OUT/<stage>.log and one line in
# $OUT/summary.txt (the last thing printed):
#   env      nvidia-smi, nvcc, the system
#   binaries gale, test_cuda_ops and bench_train_step: the ones built for sm_90 on the
#            development machine (.device/bundle.tar.xz, with the shared libraries they need
#            beside them; cuBLAS is the machine's), else built here when the machine has the
#            build dependencies (cmake -DCMAKE_CUDA_ARCHITECTURES=90)
#   ops      tests/cuda's op-by-op comparison with the CPU backend, fp32 and bf16 (table)
#   verify   gale verify --backend cuda on every golden fixture, bf16 and fp32
#   train    the tiny Mixtral, 200 steps on the GPU in bf16, against the CPU bf16 run's loss
#            curve (tests/cuda/compare_runs.py states the tolerances)
#   sample   gale sample greedy, 40 tokens, from the GPU run's checkpoint on the GPU and on the
#            CPU (same precision): the texts must be identical
#   memcheck compute-sanitizer memcheck over 2 training steps on the GPU
#   racecheck compute-sanitizer racecheck over the attention kernels (two shapes)
#   bench    gale's bf16 training step at hf_train_bench.py's two shapes (mistral-1b,
#            mixtral-8x-mini; B=4, T=4096) with the GPU time per op and shape
#            (GALE_CUDA_PROFILE=1), then hf_train_bench.py itself (PyTorch, same card)
# A stage that fails does not stop the others; the script exits 1 when any failed. The whole
# run is kept under ~8 minutes: a stage that would start past GALE_CHECK_BUDGET seconds
# (default 480) is skipped and says so.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
OUT="${OUT:-$root/.device/out}"
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"
budget="${GALE_CHECK_BUDGET:-480}"
t0=$(date +%s)
any_failed=0

note() { echo "$*" | tee -a "$summary"; }

# stage NAME LIMIT_S COMMAND...: runs it with a time limit, its output in $OUT/NAME.log
stage() {
    local name=$1 limit=$2
    shift 2
    local now=$(($(date +%s) - t0))
    if [ "$now" -ge "$budget" ]; then
        note "$(printf '%-10s SKIPPED (%ds of the %ds budget used)' "$name" "$now" "$budget")"
        any_failed=1
        return 1
    fi
    local start=$(date +%s) rc
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local took=$(($(date +%s) - start)) verdict=ok
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        verdict="FAILED (exit $rc, past ${limit}s)"
    elif [ $rc -ne 0 ]; then
        verdict="FAILED (exit $rc)"
    fi
    [ $rc -ne 0 ] && any_failed=1
    note "$(printf '%-10s %-40s %4ds' "$name" "$verdict" "$took")"
    return $rc
}

# ---- env ----
stage env 30 bash -c 'nvidia-smi; nvcc --version; uname -a; cat /etc/os-release; ldd --version | head -1; nproc'

# ---- binaries: the carried sm_90 build, else a build here ----
bin=""
cublas_dir() {
    local d
    for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
        /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/lib /usr/lib/x86_64-linux-gnu \
        "$(dirname "$(ldconfig -p | awk '/libcublasLt\.so\.13 / {print $NF; exit}')" 2>/dev/null)" \
        "$(python3 -c 'import nvidia.cublas as c; print(list(c.__path__)[0] + "/lib")' 2>/dev/null)"; do
        if [ -n "$d" ] && ls "$d"/libcublasLt.so.13* "$d"/libcublas.so.13* >/dev/null 2>&1; then
            echo "$d"
            return 0
        fi
    done
    d=$(find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -name 'libcublasLt.so.13' -print 2>/dev/null | head -1)
    [ -n "$d" ] && dirname "$d"
}
use_bundle() {
    [ -f .device/bundle.tar.xz ] || { echo "no .device/bundle.tar.xz"; return 1; }
    rm -rf /tmp/gale-bundle && mkdir -p /tmp/gale-bundle && tar -xJf .device/bundle.tar.xz -C /tmp/gale-bundle || return 1
    local cub
    cub=$(cublas_dir) || { echo "no libcublasLt.so.13 on this machine"; return 1; }
    echo "cuBLAS from $cub"
    export LD_LIBRARY_PATH="/tmp/gale-bundle/lib:$cub${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # Open MPI from the bundle: relocated, a singleton without a daemon, quiet about the
    # transport components whose libraries this machine lacks
    export OPAL_PREFIX=/tmp/gale-bundle/ompi/usr OMPI_MCA_ess_singleton_isolated=1
    export OMPI_MCA_mca_base_component_show_load_errors=0 OMPI_MCA_btl=self OMPI_MCA_pml=ob1
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    /tmp/gale-bundle/bin/gale --version >/dev/null || return 1  # opens libgale_commands.so
    bin=/tmp/gale-bundle/bin
}
build_here() {
    cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DGALE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 &&
        cmake --build build-gpu -j"$(nproc)" --target gale gale_cuda test_cuda_ops bench_train_step && bin=$root/build-gpu
}
if use_bundle >"$OUT/binaries.log" 2>&1; then
    note "$(printf '%-10s %-40s' binaries "ok (carried sm_90 build)")"
else
    stage binaries 240 bash -c "$(declare -f build_here); build_here" && bin=$root/build-gpu
fi
if [ -z "$bin" ] || [ ! -x "$bin/gale" ]; then
    note "no gale binary: nothing else can run"
    exit 1
fi
gale=$bin/gale

# ---- op by op ----
stage ops 150 "$bin/test_cuda_ops"

# ---- golden fixtures ----
verify_all() {
    local rc=0 f p
    for p in bf16 fp32; do
        for f in .device/golden/*/; do
            "$gale" verify --fixture "${f%/}" --backend cuda --precision "$p" || rc=1
        done
    done
    return $rc
}
stage verify 60 bash -c "gale=$gale; $(declare -f verify_all); verify_all"

# ---- 200 training steps against the CPU's loss curve ----
run=$OUT/gpu-run
rm -rf "$run"
train_and_compare() {
    "$gale" train tests/cuda/mixtral-tiny-check.yaml --set backend.device=cuda --set run.dir="$run" || return 1
    python3 tests/cuda/compare_runs.py .device/cpu-run/metrics.jsonl "$run/metrics.jsonl"
}
stage train 150 bash -c "gale=$gale run=$run; $(declare -f train_and_compare); train_and_compare"

# ---- greedy text: GPU and CPU from the same checkpoint ----
sample_both() {
    local p rc=0 prompt="Q: Why"
    for p in fp32 bf16; do
        "$gale" sample --checkpoint "$run" --prompt "$prompt" --max-new 40 --temperature 0 --backend cuda \
            --precision $p >"$OUT/sample-cuda-$p.txt" || rc=1
        "$gale" sample --checkpoint "$run" --prompt "$prompt" --max-new 40 --temperature 0 --backend cpu \
            --precision $p >"$OUT/sample-cpu-$p.txt" || rc=1
        echo "== $p, cuda:"; cat "$OUT/sample-cuda-$p.txt"; echo; echo "== $p, cpu:"; cat "$OUT/sample-cpu-$p.txt"; echo
        if cmp -s "$OUT/sample-cuda-$p.txt" "$OUT/sample-cpu-$p.txt"; then echo "$p: identical"; else echo "$p: DIFFER"; rc=1; fi
    done
    return $rc
}
stage sample 60 bash -c "gale=$gale run=$run OUT=$OUT; $(declare -f sample_both); sample_both"

# ---- compute-sanitizer ----
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$sanitizer" ]; then
    stage memcheck 150 "$sanitizer" --tool memcheck --error-exitcode 9 --print-limit 20 "$gale" train \
        tests/cuda/mixtral-tiny-check.yaml --set backend.device=cuda --set run.steps=2 --set optim.warmup=1 \
        --set run.checkpoint_every=0 --set run.dir="$OUT/memcheck-run"
    stage racecheck 120 env GALE_CUDA_TEST=attention "$sanitizer" --tool racecheck --error-exitcode 9 \
        --print-limit 20 "$bin/test_cuda_ops"
else
    note "memcheck   SKIPPED (no compute-sanitizer)"
fi

# ---- speed: gale and PyTorch on the same card ----
bench_gale() {
    local shape rc=0
    for shape in mistral-1b mixtral-8x-mini; do
        mkdir -p "/tmp/bench-$shape" && cp "tests/bench/configs/gpu-$shape.json" "/tmp/bench-$shape/config.json"
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$OUT/mem-gale-$shape.csv" &
        local smi=$!
        GALE_CUDA_PROFILE=1 "$bin/bench_train_step" --dir "/tmp/bench-$shape" --backend cuda --precision bf16 \
            --random 4 4096 --warmup 2 --steps 4 --threads "$(nproc)" >"$OUT/bench-gale-$shape.json" \
            2>"$OUT/profile-gale-$shape.txt" || rc=1
        cat "$OUT/bench-gale-$shape.json"; head -25 "$OUT/profile-gale-$shape.txt"
        kill $smi 2>/dev/null
        echo "peak memory used (nvidia-smi, MiB): $(sort -n "$OUT/mem-gale-$shape.csv" | tail -1)"
    done
    return $rc
}
stage bench-gale 150 bash -c "bin=$bin OUT=$OUT; $(declare -f bench_gale); bench_gale"
stage bench-torch 180 env OUT="$OUT" python3 .device/hf_train_bench.py mistral-1b mixtral-8x-mini

# ---- the table ----
python3 - "$OUT" <<'EOF' | tee -a "$summary"
import json, os, sys
out = sys.argv[1]
peak = float(os.environ.get("PEAK_TFLOPS", "989")) * 1e12
shapes = {"mistral-1b": dict(H=2048, L=16, I=7168, V=32000, nh=16, kv=4, E=0, K=0),
          "mixtral-8x-mini": dict(H=2048, L=8, I=2816, V=32000, nh=16, kv=4, E=8, K=2)}
try:
    torch = json.load(open(os.path.join(out, "baseline.json")))
except Exception:
    torch = {}
print("%-16s %14s %8s %14s %8s %8s" % ("shape", "gale tok/s", "MFU", "torch tok/s", "MFU", "ratio"))
for name, s in shapes.items():
    try:
        g = json.loads(open(os.path.join(out, "bench-gale-%s.json" % name)).read().strip().splitlines()[-1])
    except Exception:
        print("%-16s %14s" % (name, "no result"))
        continue
    H, L, I, V, hd = s["H"], s["L"], s["I"], s["V"], s["H"] // s["nh"]
    attn_p = L * (2 * H * H + 2 * H * s["kv"] * hd) + L * 2 * H
    mlp = L * 3 * H * I * (s["K"] if s["E"] else 1) + (L * H * s["E"] if s["E"] else 0)
    n_active_noemb = attn_p + mlp + V * H + H  # as hf_train_bench.py: the head counts, the embedding not
    T = g["seq"]
    flops = 6 * n_active_noemb * g["batch"] * T + 6 * L * s["nh"] * hd * T * g["batch"] * T
    mfu = flops * (g["tokens_per_s"] / (g["batch"] * T)) / peak
    t = torch.get(name, {})
    ratio = g["tokens_per_s"] / t["tokens_per_s"] if t else float("nan")
    print("%-16s %14.0f %7.1f%% %14.0f %7.1f%% %8.2f" % (name, g["tokens_per_s"], 100 * mfu,
          t.get("tokens_per_s", float("nan")), 100 * t.get("mfu", float("nan")), ratio))
EOF
for f in "$OUT"/profile-gale-*.txt; do
    [ -f "$f" ] && { echo "== $(basename "$f"): the ops' GPU time over all 6 steps, largest first"; head -16 "$f"; } | tee -a "$summary"
done
note "total $(($(date +%s) - t0))s; $([ $any_failed -eq 0 ] && echo 'every stage ok' || echo 'SOME STAGE FAILED')"
echo "== summary ($summary)"
cat "$summary"
exit $any_failed
