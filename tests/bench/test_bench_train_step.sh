#!/usr/bin/env bash
# bench_train_step and the PyTorch reference train the same thing. On each golden fixture's
# config (llama, mistral with its sliding window, mixtral) with a random model and a random
# batch longer than the window, and on a Mixtral of 8 experts fed 3 tokens (6 top-2 slots:
# some experts get no token, and AdamW must still decay them and move them by their momentum),
# both sides run 4 full steps (forward, backward, clip, AdamW) in fp32: every step's loss and
# gradient norm must agree within 1e-4 relative, and every weight afterwards within 1e-4
# relative (the README's after-3-steps tolerance). Guards the benchmark's two sides against
# drifting apart. Needs Debian's python3-torch (setup_bench.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${GALE_SHARED:?GALE_SHARED must name the shared folder}"
: "${GALE_BUILD:?GALE_BUILD must name the build folder}"
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  echo "SKIP: /usr/bin/python3 has no torch (tests/bench/setup_bench.sh installs it)"
  exit 77
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/gale-bench-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT

/usr/bin/python3 - "$GALE_SHARED/golden/mixtral-tiny/config.json" "$work/mixtral-8-experts.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["num_local_experts"] = 8
json.dump(config, open(sys.argv[2], "w"), indent=2)
PY

check_case() {  # name config batch seq
  local name="$1" config="$2" batch="$3" seq="$4"
  /usr/bin/python3 "$here/bench_torch_step.py" make-inputs --config "$config" --batch "$batch" \
    --seq "$seq" --seed 7 --out "$work/$name"
  OMP_NUM_THREADS=1 /usr/bin/python3 "$here/bench_torch_step.py" run --dir "$work/$name" \
    --steps 3 --warmup 1 --threads 1 --save "$work/$name.torch" > "$work/$name.torch.json"
  OMP_NUM_THREADS=1 "$GALE_BUILD/bench_train_step" --dir "$work/$name" --steps 3 --warmup 1 \
    --threads 1 --save "$work/$name.gale" > "$work/$name.gale.json"
  /usr/bin/python3 - "$here" "$name" "$work/$name" <<'PY'
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import torch_reference as ref
name, base = sys.argv[2], sys.argv[3]
torch_run, gale_run = json.load(open(base + ".torch.json")), json.load(open(base + ".gale.json"))
worst = 0.0
for key, what in (("losses", "loss"), ("grad_norms", "grad norm before clip")):
    assert len(torch_run[key]) == len(gale_run[key]) == 4, (name, key)
    for step, (t, g) in enumerate(zip(torch_run[key], gale_run[key])):
        err = abs(g - t) / abs(t)
        worst = max(worst, err)
        if err > 1e-4:
            sys.exit(f"{name}: step {step} {what}: torch {t:.8g}, gale {g:.8g}, rel err {err:.2e} > 1e-4")
torch_w = ref.load_safetensors(base + ".torch/model.safetensors")
gale_w = ref.load_safetensors(base + ".gale/model.safetensors")
if sorted(torch_w) != sorted(gale_w):
    sys.exit(f"{name}: the two sides saved different tensors: {sorted(set(torch_w) ^ set(gale_w))}")
for tensor, want in torch_w.items():
    got = gale_w[tensor].astype(np.float64)
    err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    worst = max(worst, err)
    if err > 1e-4:
        sys.exit(f"{name}: {tensor} after 4 steps: rel err gale vs torch {err:.2e} > 1e-4")
print(f"{name}: 4 steps, losses {torch_run['losses'][0]:.4f} -> {torch_run['losses'][-1]:.4f}, "
      f"{len(torch_w)} weights; worst rel diff gale vs torch {worst:.1e}")
PY
}

for config in "$GALE_SHARED"/golden/*/config.json; do
  check_case "$(basename "$(dirname "$config")")" "$config" 3 24
done
check_case mixtral-8-experts-3-tokens "$work/mixtral-8-experts.json" 1 3
