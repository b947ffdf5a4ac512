"""The torch side of bench_gemm_shapes.sh: reads bench_gemm_shapes's JSON lines (gale's
OpenBLAS sgemm per shape) on stdin, times torch.mm on the same shapes and transpositions at one
thread in thread CPU time (best of R), and prints both side by side as a Markdown table (each
also as a share of the core's fp32 FMA peak that bench_gemm_shapes measured first), with
BLIS's times on the same shapes (bench_gemm_shapes built against BLIS, its JSON lines in the
file --blis names) as a third column when given.

    bench_gemm_shapes | python bench_gemm_shapes_torch.py [--repeats R] [--blis FILE]
"""

import argparse
import json
import sys
import time

import torch


def torch_ms(op, m, n, k, repeats):
    """Best thread CPU time of C = op(A) op(B), A [m, k] and B [k, n] as row-major stored."""
    a = torch.rand(k, m).t() if op[0] == "T" else torch.rand(m, k)
    b = torch.rand(n, k).t() if op[1] == "T" else torch.rand(k, n)
    c = torch.empty(m, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        torch.mm(a, b, out=c)
        best = min(best, time.thread_time() - start)
    return best * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--blis", help="bench_gemm_shapes's JSON lines built against BLIS")
    args = parser.parse_args()
    torch.set_num_threads(1)
    blas = "MKL" if "BLAS_INFO=mkl" in torch.__config__.show() else "torch's BLAS"
    blis = {}
    if args.blis:
        with open(args.blis) as f:
            blis = {(b["name"], b["op"], b["m"], b["n"], b["k"]): b for b in map(json.loads, f) if "name" in b}
    peak = json.loads(sys.stdin.readline())["peak_gflops"]
    share = (lambda gflops: f"{100 * gflops / peak:.0f}%") if peak else (lambda gflops: "-")
    header = (f"| product (op m x n x k) | gale OpenBLAS ms | GFLOP/s | of peak | torch {torch.__version__} {blas} ms"
              " | GFLOP/s | of peak | MKL / OpenBLAS time |")
    rule = "| --- | --- | --- | --- | --- | --- | --- | --- |"
    if blis:
        header += " BLIS ms | GFLOP/s | BLIS / OpenBLAS time |"
        rule += " --- | --- | --- |"
    print(header)
    print(rule)
    kernels = set()
    for line in sys.stdin:
        g = json.loads(line)
        kernels.add(f"OpenBLAS {g['kernels']}")
        ms = torch_ms(g["op"], g["m"], g["n"], g["k"], args.repeats)
        gflops = 2.0 * g["m"] * g["n"] * g["k"] / ms * 1e-6
        row = (f"| {g['name']} ({g['op']} {g['m']} x {g['n']} x {g['k']}) | {g['ms']:.2f} | {g['gflops']:.1f} | "
               f"{share(g['gflops'])} | {ms:.2f} | {gflops:.1f} | {share(gflops)} | {ms / g['ms']:.2f} |")
        b = blis.get((g["name"], g["op"], g["m"], g["n"], g["k"]))
        if blis and b is None:
            sys.exit(f"bench_gemm_shapes_torch: {args.blis} has no line for {g['name']}")
        if b:
            kernels.add(f"BLIS {b['kernels']}")
            row += f" {b['ms']:.2f} | {b['gflops']:.1f} | {b['ms'] / g['ms']:.2f} |"
        print(row)
    print(f"\nkernels: {', '.join(sorted(kernels))}")
    print(f"the core's fp32 FMA peak: {peak:.1f} GFLOP/s (AVX2+FMA, independent chains, best of {args.repeats})"
          if peak else "the core's fp32 FMA peak: not measured (no AVX2+FMA)")


if __name__ == "__main__":
    main()
