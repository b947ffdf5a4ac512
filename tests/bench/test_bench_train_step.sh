#!/usr/bin/env bash
# bench_train_step and the PyTorch reference train the same thing: on each golden fixture's
# config (llama, mistral with its sliding window, mixtral), a random model and a random batch
# longer than the window, both sides run 4 full steps (forward, backward, clip, AdamW) in fp32
# and every step's loss and gradient norm must agree within 1e-4 relative. Guards the
# benchmark's two sides against drifting apart. Needs Debian's python3-torch (setup_bench.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${GALE_SHARED:?GALE_SHARED must name the shared folder}"
: "${GALE_BUILD:?GALE_BUILD must name the build folder}"
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  echo "SKIP: /usr/bin/python3 has no torch (tests/bench/setup_bench.sh installs it)"
  exit 0
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/gale-bench-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
for config in "$GALE_SHARED"/golden/*/config.json; do
  case_name="$(basename "$(dirname "$config")")"
  /usr/bin/python3 "$here/bench_torch_step.py" make-inputs --config "$config" --batch 3 --seq 24 \
    --seed 7 --out "$work/$case_name"
  OMP_NUM_THREADS=1 /usr/bin/python3 "$here/bench_torch_step.py" run --dir "$work/$case_name" \
    --steps 3 --warmup 1 --threads 1 > "$work/$case_name.torch.json"
  OMP_NUM_THREADS=1 "$GALE_BUILD/bench_train_step" --dir "$work/$case_name" --steps 3 --warmup 1 \
    --threads 1 > "$work/$case_name.gale.json"
  /usr/bin/python3 - "$case_name" "$work/$case_name.torch.json" "$work/$case_name.gale.json" <<'PY'
import json, sys
case, torch_run, gale_run = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
worst = 0.0
for key, what in (("losses", "loss"), ("grad_norms", "grad norm before clip")):
    assert len(torch_run[key]) == len(gale_run[key]) == 4, (case, key)
    for step, (t, g) in enumerate(zip(torch_run[key], gale_run[key])):
        err = abs(g - t) / abs(t)
        worst = max(worst, err)
        if err > 1e-4:
            sys.exit(f"{case}: step {step} {what}: torch {t:.8g}, gale {g:.8g}, rel err {err:.2e} > 1e-4")
print(f"{case}: 4 steps, losses {torch_run['losses'][0]:.4f} -> {torch_run['losses'][-1]:.4f}, "
      f"worst rel diff gale vs torch {worst:.1e}")
PY
done
