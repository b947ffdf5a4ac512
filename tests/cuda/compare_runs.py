"""Compares a GPU training run's loss curve with the CPU bf16 run's (metrics.jsonl of each).

Usage: python3 compare_runs.py CPU_METRICS GPU_METRICS

The two runs start from the same weights (drawn on the host from run.seed) and read the same
batches, so they part only by the arithmetic: the CPU's bf16 mode and the GPU's bf16 differ in
the order of fp32 sums and where a value sits next to a rounding boundary, and training
amplifies such differences slowly. Tolerances, stated:
  - step 1 (the same weights and batch, one forward): |loss_gpu - loss_cpu| <= 0.02, about the
    bf16 forward tolerance of gale verify for 4 layers (u (13 L + 3) = 0.21 relative on the
    logits) turned into the loss's much smaller change;
  - every 10-step mean of the loss after that: within 0.10 nats of the CPU's;
  - no step's loss or gradient norm is NaN or infinite.
Exits 1 when one fails, 2 when a file is missing or unreadable.
"""
import json
import math
import sys

STEP1_TOL = 0.02
WINDOW = 10
WINDOW_TOL = 0.10


def losses(path):
    out = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "train":
                out[rec["step"]] = (rec["loss"], rec["grad_norm"])
    return out


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    try:
        cpu, gpu = losses(sys.argv[1]), losses(sys.argv[2])
    except (OSError, ValueError, KeyError) as e:
        print("compare_runs: %s" % e)
        return 2
    steps = sorted(set(cpu) & set(gpu))
    failed = []
    if not steps or len(steps) < len(cpu):
        failed.append("the GPU run has %d of the CPU run's %d steps" % (len(steps), len(cpu)))
    for s in steps:
        for name, v in (("loss", gpu[s][0]), ("grad norm", gpu[s][1])):
            if v is None or not math.isfinite(v):
                failed.append("step %d: GPU %s is %s" % (s, name, v))
    if steps and abs(gpu[steps[0]][0] - cpu[steps[0]][0]) > STEP1_TOL:
        failed.append("step %d: loss %.5f on the GPU, %.5f on the CPU (tolerance %.2f)"
                      % (steps[0], gpu[steps[0]][0], cpu[steps[0]][0], STEP1_TOL))
    print("%6s %10s %10s %10s" % ("steps", "cpu mean", "gpu mean", "diff"))
    worst = 0.0
    for end in range(WINDOW, len(steps) + 1, WINDOW):
        window = steps[end - WINDOW:end]
        try:
            c = sum(cpu[s][0] for s in window) / WINDOW
            g = sum(gpu[s][0] for s in window) / WINDOW
        except TypeError:
            continue
        d = g - c
        worst = max(worst, abs(d))
        print("%3d-%-3d %10.4f %10.4f %+10.4f" % (window[0], window[-1], c, g, d))
        if abs(d) > WINDOW_TOL:
            failed.append("steps %d-%d: mean loss %.4f on the GPU, %.4f on the CPU (tolerance %.2f)"
                          % (window[0], window[-1], g, c, WINDOW_TOL))
    print("largest 10-step mean difference: %.4f (tolerance %.2f); step 1: %.5f vs %.5f"
          % (worst, WINDOW_TOL, gpu[steps[0]][0] if steps else float("nan"),
             cpu[steps[0]][0] if steps else float("nan")))
    for f in failed:
        print("FAIL:", f)
    print("loss curve: %s" % ("FAIL" if failed else "ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
