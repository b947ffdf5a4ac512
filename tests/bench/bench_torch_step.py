"""The PyTorch side of bench_train_cpu.sh: times full training steps (forward, backward,
clip to 1.0, AdamW) of torch_reference.py on the CPU in fp32.

    bench_torch_step.py make-inputs --config CFG.json --batch B --seq T --seed S --out DIR
        a random model (DIR/config.json, DIR/model.safetensors) and one batch of B rows of
        T + 1 random tokens (DIR/batch.safetensors, "tokens" I64), which gale's
        bench_train_step loads too, so both sides train the same weights on the same tokens
    bench_torch_step.py run --dir DIR --steps N --warmup W --threads K [--compile] [--profile]
                            [--save OUT] [--mask-fraction F]
        times N steps after W warm-up steps at K threads; prints one JSON line (with --compile,
        torch 2.x's torch.compile (Inductor) runs the forward and backward and the clip + AdamW
        update, and at least 3 warm-up steps are taken: the first compiles, the second compiles
        again once AdamW has its state; with --profile, also torch.profiler's table of the timed
        steps' ops, by self CPU time, on stderr; with --save, writes the trained weights to
        OUT/model.safetensors; with --mask-fraction F, the first F of each row's targets are
        -100, as an SFT prompt's, and the loss is over the others, as transformers computes it:
        every position's logits, then cross-entropy with ignore_index). The JSON says which BLAS
        kernels ran ("blas").
"""

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402


def make_inputs(args):
    cfg = ref.ModelConfig.from_file(args.config)
    os.makedirs(args.out, exist_ok=True)
    shutil.copyfile(args.config, os.path.join(args.out, "config.json"))
    with open(args.config) as f:
        std = json.load(f).get("initializer_range", 0.02)
    weights = ref.random_weights(cfg, torch.float32, args.seed, std)
    ref.save_safetensors(os.path.join(args.out, "model.safetensors"),
                         {name: t.detach().numpy() for name, t in weights.items()})
    generator = torch.Generator().manual_seed(args.seed + 1)
    tokens = torch.randint(cfg.vocab_size, (args.batch, args.seq + 1), generator=generator)
    ref.save_safetensors(os.path.join(args.out, "batch.safetensors"), {"tokens": tokens.numpy().astype(np.int64)})


def blas_description():
    """The BLAS torch's GEMMs run on: MKL (PyPI wheels) or OpenBLAS (Debian), with its core."""
    config = torch.__config__.show()
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "?"
    if "BLAS_INFO=mkl" in config:
        return "MKL (torch CPU capability %s)" % capability
    with open("/proc/self/maps") as maps:  # the BLAS libraries loaded: one of them is OpenBLAS
        paths = {line.split()[-1] for line in maps if "blas" in os.path.basename(line.split()[-1])}
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            lib.openblas_get_config.restype = ctypes.c_char_p
            config_text = lib.openblas_get_config().decode()
            return "%s, core %s" % (" ".join(config_text.split()[:2]), lib.openblas_get_corename().decode())
        except (OSError, AttributeError):
            continue
    return "unknown (torch CPU capability %s)" % capability


def compiled_step(cfg, weights, optimizer, clip=1.0):
    """ref.train_step's step with torch.compile on the forward + loss (so the backward too) and on
    the clip + AdamW update."""
    params = list(weights.values())

    def loss_of(inputs, targets):
        logits, router_logits = ref.forward_logits(cfg, weights, inputs)
        return ref.loss_from_logits(cfg, logits, router_logits, targets)[0]

    def update():
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        return norm

    loss_of, update = torch.compile(loss_of), torch.compile(update)

    def step(inputs, targets):
        optimizer.zero_grad(set_to_none=False)
        loss = loss_of(inputs, targets)
        loss.backward()
        for tensor in params:  # as ref.train_step: an expert no token chose has a zero gradient
            if tensor.grad is None:
                tensor.grad = torch.zeros_like(tensor)
        return loss.detach(), update()

    return step


def run(args):
    torch.set_num_threads(args.threads)
    cfg = ref.ModelConfig.from_file(os.path.join(args.dir, "config.json"))
    weights = ref.weights_from_arrays(cfg, ref.load_safetensors(os.path.join(args.dir, "model.safetensors")),
                                      torch.float32)
    tokens = torch.from_numpy(ref.load_safetensors(os.path.join(args.dir, "batch.safetensors"))["tokens"])
    inputs = tokens[:, :-1].contiguous()
    targets = tokens[:, 1:].contiguous()
    targets[:, :int(args.mask_fraction * targets.shape[1])] = -100  # as bench_train_step's
    optimizer = ref.make_optimizer(weights)
    if args.compile:
        step_fn = compiled_step(cfg, weights, optimizer)
        args.warmup = max(args.warmup, 3)
    else:
        def step_fn(inputs, targets):
            return ref.train_step(cfg, weights, optimizer, inputs, targets)
    times, losses, norms = [], [], []
    profiler = torch.profiler.profile() if args.profile else contextlib.nullcontext()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            profiler.__enter__()
        start = time.perf_counter()
        loss, norm = step_fn(inputs, targets)
        elapsed = time.perf_counter() - start
        losses.append(loss.item())
        norms.append(norm.item())
        if step >= args.warmup:
            times.append(elapsed)
    profiler.__exit__(None, None, None)
    if args.profile:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30), file=sys.stderr)
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        ref.save_safetensors(os.path.join(args.save, "model.safetensors"),
                             {name: t.detach().numpy() for name, t in weights.items()})
    median = statistics.median(times)
    print(json.dumps({
        "impl": "torch " + torch.__version__ + (" compiled" if args.compile else " eager"),
        "threads": torch.get_num_threads(), "blas": blas_description(),
        "batch": int(inputs.shape[0]), "seq": int(inputs.shape[1]),
        "warmup": args.warmup, "steps": args.steps, "mask_fraction": args.mask_fraction,
        "step_times": times, "median_step_s": median, "min_step_s": min(times),
        "tokens_per_s": inputs.numel() / median,
        "losses": losses, "grad_norms": norms,
    }))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-inputs", help="write a random model and batch")
    make.add_argument("--config", required=True)
    make.add_argument("--batch", type=int, required=True)
    make.add_argument("--seq", type=int, required=True)
    make.add_argument("--seed", type=int, default=1234)
    make.add_argument("--out", required=True)
    timed = sub.add_parser("run", help="time training steps")
    timed.add_argument("--dir", required=True)
    timed.add_argument("--steps", type=int, default=10)
    timed.add_argument("--warmup", type=int, default=2)
    timed.add_argument("--threads", type=int, default=1)
    timed.add_argument("--compile", action="store_true", help="torch.compile the step (torch 2.x)")
    timed.add_argument("--profile", action="store_true", help="print torch.profiler's op table on stderr")
    timed.add_argument("--save", help="folder to write the trained weights to")
    timed.add_argument("--mask-fraction", type=float, default=0.0,
                       help="ignore the first F of each row's targets (an SFT prompt)")
    args = parser.parse_args(argv[1:])
    if args.command == "make-inputs":
        make_inputs(args)
    else:
        if args.steps < 1 or args.warmup < 0 or args.threads < 1:
            parser.error("--steps and --threads must be >= 1, --warmup >= 0")
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
