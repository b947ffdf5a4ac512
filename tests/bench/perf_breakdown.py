"""Where gale's CPU training step spends its time, per op and per stage of the model, from a
`perf record -k monotonic --call-graph dwarf` profile of bench_train_step (profile_train_step.sh
records one). Reads `perf script -F tid,time,ip,sym` on stdin and bench_train_step's JSON line
(--bench FILE), keeps only the samples inside the timed steps, and attributes each one to:

  op:    the ops-table kernel it ran in (the outermost cpu_* frame: cpu_matmul, cpu_attention_fwd,
         cpu_cross_entropy, ...; BLAS frames count as cpu_matmul), or "(outside the ops table)"
         with its leaf function
  stage: the model function that called that kernel (attention_forward, moe_backward,
         head_forward_backward, adamw_step, ...)

and prints tables of share of samples and milliseconds per step (share x mean timed step).
"""

import argparse
import collections
import json
import re
import sys

KERNEL_SPACE = 0xFFFF800000000000
# Frames that sit between a kernel and its caller without saying anything about either.
PASS_THROUGH = re.compile(r"^(GOMP_|gomp_|\[unknown\]|__libc_|__GI_|start_thread|clone)")


def clean(symbol):
    symbol = symbol.replace(" (inlined)", "")
    symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol)
    return re.sub(r"\._omp_fn\.\d+$", "", symbol)


SAMPLE_HEADER = re.compile(r"^\s*\d+\s+(\d+\.\d+):")  # "  tid  seconds:"; frames start with a tab


def read_samples(lines):
    """(time, [frame names leaf first], leaf in kernel space) for every sample."""
    time, frames, in_kernel = None, [], False
    for line in lines:
        line = line.rstrip("\n")
        header = SAMPLE_HEADER.match(line)
        if header or not line.strip():
            if time is not None:
                yield time, frames, in_kernel
            time, frames, in_kernel = (float(header.group(1)) if header else None), [], False
        else:
            parts = line.split(None, 1)
            if len(parts) == 2:
                if not frames:
                    in_kernel = int(parts[0], 16) >= KERNEL_SPACE
                frames.append(clean(parts[1]))
    if time is not None:
        yield time, frames, in_kernel


# Frames of the ops table's matmul: its BLAS calls (cpu_matmul itself may be a tail call away).
MATMUL_FRAME = re.compile(r"^(cblas_s|sgemm|sgemv|blas_product$)")


def attribute(frames, in_kernel):
    """(stage, op) of one sample."""
    outer_op, op = None, None
    for i, name in enumerate(frames):
        if name.startswith("cpu_"):
            outer_op, op = i, name
        elif MATMUL_FRAME.match(name):
            outer_op, op = i, op or "cpu_matmul"
    if outer_op is None:
        leaf = next((f for f in frames if not f.startswith(("asm_", "exc_"))), "?")
        stage = next((f for f in frames[1:] if f and not PASS_THROUGH.match(f)), "?")
        return stage, f"(outside the ops table: {'kernel, ' if in_kernel else ''}{leaf})"
    stage = next((f for f in frames[outer_op + 1:] if not PASS_THROUGH.match(f)), "(caller not unwound)")
    return stage, op


def print_table(title, counts, total, step_ms, limit):
    print(f"\n{title}")
    print(f"| {'':56s} | share | ms/step |")
    print(f"| {'-' * 56} | ----- | ------- |")
    for key, n in counts.most_common(limit):
        print(f"| {key:56s} | {100.0 * n / total:4.1f}% | {step_ms * n / total:7.1f} |")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", required=True, help="bench_train_step's JSON output")
    parser.add_argument("--limit", type=int, default=30, help="rows per table")
    args = parser.parse_args(argv[1:])
    with open(args.bench) as f:
        bench = json.loads(f.read())
    begin, end = bench["timed_from"], bench["timed_to"]
    step_ms = 1000.0 * (end - begin) / bench["steps"]

    by_op, by_stage, by_both = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for time, frames, in_kernel in read_samples(sys.stdin):
        if time is None or not begin <= time <= end or not frames:
            continue
        stage, op = attribute(frames, in_kernel)
        by_op[op] += 1
        by_stage[stage] += 1
        by_both[f"{stage} / {op}"] += 1
        total += 1
    if total == 0:
        print("perf_breakdown: no samples inside the timed steps (was perf recorded with -k monotonic?)",
              file=sys.stderr)
        return 1
    print(f"{total} samples in {bench['steps']} timed steps, {step_ms:.0f} ms per step (mean), "
          f"{bench['threads']} thread(s); ms/step = share x mean step")
    print_table("by op (ops-table kernel)", by_op, total, step_ms, args.limit)
    print_table("by stage (the model function that called it)", by_stage, total, step_ms, args.limit)
    print_table("by stage / op", by_both, total, step_ms, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
