#!/usr/bin/env python3
"""project_mixtral_ep: a projection, not a measurement, of one training step of Mixtral 8x7B
under gale's data x expert parallelism (EP 8) on 8 to 64 GPUs: the bytes each collective moves
per GPU and step, from the same formulas as gale's per-step byte counts (train/comm.c,
train/grad_sync.c; checked against the measured counts of tests/bench/bench_ep_scaling.sh), the
time they take on the assumed links, and the compute time of the step's tokens at an assumed
per-GPU rate.

  python3 tests/bench/project_mixtral_ep.py [--rate TFLOPS] [--link-gbit 400] [--nvlink-gbyte 450]
      [--tokens-per-gpu 65536] [--seq 4096] [--recompute] [--grad-bytes 4]
"""
import argparse

h, inter, layers, experts, k, vocab, kv, heads = 4096, 14336, 32, 8, 2, 32000, 1024, 32


def params():
    dense = 2 * vocab * h + layers * (2 * h * h + 2 * h * kv + 2 * h + experts * h) + h
    expert = layers * experts * 3 * h * inter
    return dense, expert


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=468, help="sustained TFLOP/s per GPU (Megatron's Mixtral 8x7B on H100)")
    ap.add_argument("--link-gbit", type=float, default=400, help="inter-node link per GPU, Gbit/s")
    ap.add_argument("--nvlink-gbyte", type=float, default=450, help="intra-node per GPU and direction, GB/s")
    ap.add_argument("--tokens-per-gpu", type=int, default=65536, help="tokens per GPU per step (16 x 4096)")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--recompute", action="store_true", help="backend.recompute layer: the forward's exchanges twice")
    ap.add_argument("--grad-bytes", type=int, default=4, help="4: fp32 gradients and master as gale keeps them; 2: bf16")
    a = ap.parse_args()
    dense, expert = params()
    active = dense + layers * k * 3 * h * inter
    # 6 N per token for the products, plus attention's score and value products (causal: half)
    flops = 6 * active + 6 * layers * a.seq * h
    link = a.link_gbit / 8 * 1e9
    nvlink = a.nvlink_gbyte * 1e9
    ep = 8
    transfers = 6 if a.recompute else 4  # dispatch + combine, forward (again) and backward
    print(f"Mixtral 8x7B: {(dense + expert) / 1e9:.2f}B parameters ({dense / 1e9:.3f}B dense, {expert / 1e9:.2f}B in experts), "
          f"{active / 1e9:.2f}B active, {flops / 1e9:.1f} GFLOP per token trained; {a.tokens_per_gpu} tokens per GPU per step")
    print(f"assumed: {a.rate:g} TFLOP/s per GPU sustained, EP groups of 8 within a node ({a.nvlink_gbyte:g} GB/s), "
          f"{a.link_gbit:g} Gbit/s per GPU between nodes; gradients {a.grad_bytes} B per element; bf16 activations")
    print("| GPUs (dp x ep) | compute s | all-to-all GB | on NVLink s | on 400G s | grad RS+AG GB | grad s | step s (no overlap) | comm share | TFLOP/s per GPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for gpus in (8, 16, 32, 64):
        dp = gpus // ep
        # recomputation runs each layer's forward again: a third more of the products' work,
        # not counted in the model FLOPs of the last column (as MFU is)
        work = flops + (2 * active + 2 * layers * a.seq * h if a.recompute else 0)
        compute = a.tokens_per_gpu * work / (a.rate * 1e12)
        # each token's k slots go to the ranks holding their experts, (ep-1)/ep of them off the
        # rank under balanced routing: a row of h bf16 values per slot and transfer, per layer
        a2a = transfers * k * h * 2 * (ep - 1) / ep * layers * a.tokens_per_gpu
        # ZeRO-1: reduce-scatter + all-gather, (p-1)/p each: dense over the world, the GPU's
        # experts (1/ep of them) over its dp group
        grads = 2 * (gpus - 1) / gpus * dense * a.grad_bytes + 2 * (dp - 1) / dp * expert / ep * a.grad_bytes
        grad_s = grads / link if gpus > ep else grads / nvlink  # a world beyond a node rides the slowest link
        step = compute + a2a / nvlink + grad_s
        print(f"| {gpus} ({dp} x {ep}) | {compute:.2f} | {a2a / 1e9:.1f} | {a2a / nvlink:.2f} | {a2a / link:.2f} | "
              f"{grads / 1e9:.1f} | {grad_s:.2f} | {step:.2f} | {100 * (step - compute) / step:.0f}% | "
              f"{a.tokens_per_gpu * flops / step / 1e12:.0f} |")


if __name__ == "__main__":
    main()
