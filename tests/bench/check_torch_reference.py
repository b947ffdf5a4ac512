"""Proves torch_reference.py right before it is trusted as the benchmark's peer: for each fixture
folder (default: every folder of $GALE_SHARED/golden, or ../shared/golden), run the reference in
float64 and compare logits, losses, every gradient and every weight after three AdamW steps with
expected.safetensors / expected.json, within the tolerances of docs/math.md.

    /usr/bin/python3 tests/bench/check_torch_reference.py [--dtype float32] [FIXTURE_DIR ...]

float64 (the default) checks the math; float32 checks that the precision the benchmark runs in
also meets the README's fp32 tolerances. Prints one line per quantity and exits 1 when any is
out of tolerance.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

LOGITS_TOL = 1e-5
GRAD_TOL = 1e-4
AFTER3_TOL = 1e-4
LOSS_TOL = 1e-5


def relative_error(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


class Report:
    def __init__(self, case):
        self.case = case
        self.failures = 0

    def check(self, what, error, tolerance):
        ok = error <= tolerance
        self.failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {self.case:14s} {what:60s} rel err {error:.3e} (tol {tolerance:.0e})")


def check_fixture(folder, dtype=torch.float64):
    case = os.path.basename(os.path.normpath(folder))
    report = Report(case)
    cfg = ref.ModelConfig.from_file(os.path.join(folder, "config.json"))
    arrays = ref.load_safetensors(os.path.join(folder, "model.safetensors"))
    expected = ref.load_safetensors(os.path.join(folder, "expected.safetensors"))
    with open(os.path.join(folder, "expected.json")) as f:
        expected_json = json.load(f)
    input_ids = torch.from_numpy(expected["input_ids"])
    labels = torch.from_numpy(expected["labels"])

    weights = ref.weights_from_arrays(cfg, arrays, dtype)
    logits, loss, ce, aux = ref.forward(cfg, weights, input_ids, labels)
    report.check("logits", relative_error(logits.detach(), expected["logits"]), LOGITS_TOL)
    report.check("loss", abs(loss.item() - expected_json["loss"]) / abs(expected_json["loss"]), LOSS_TOL)
    report.check("ce_loss", abs(ce.item() - expected_json["ce_loss"]) / abs(expected_json["ce_loss"]), LOSS_TOL)
    if "aux_loss" in expected_json:
        report.check("aux_loss", abs(aux.item() - expected_json["aux_loss"]) / abs(expected_json["aux_loss"]), LOSS_TOL)
    loss.backward()
    for name, tensor in weights.items():
        report.check("grad." + name, relative_error(tensor.grad, expected["grad." + name]), GRAD_TOL)

    weights = ref.weights_from_arrays(cfg, arrays, dtype)
    optimizer = ref.make_optimizer(weights)
    losses, norms = [], []
    for _ in range(3):
        step_loss, norm = ref.train_step(cfg, weights, optimizer, input_ids, ref.targets_from_labels(labels))
        losses.append(step_loss.item())
        norms.append(norm.item())
    with torch.no_grad():
        losses.append(ref.forward(cfg, weights, input_ids, labels)[1].item())
    for step, (got, want) in enumerate(zip(losses, expected_json["adamw_losses"])):
        report.check(f"adamw loss {step}", abs(got - want) / abs(want), LOSS_TOL)
    for step, (got, want) in enumerate(zip(norms, expected_json["adamw_grad_norms_before_clip"])):
        report.check(f"grad norm before clip, step {step}", abs(got - want) / abs(want), LOSS_TOL)
    for name, tensor in weights.items():
        report.check("after3." + name, relative_error(tensor.detach(), expected["after3." + name]), AFTER3_TOL)
    return report.failures


def main(argv):
    parser = argparse.ArgumentParser(description="check torch_reference.py against golden fixtures")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("folders", nargs="*", help="fixture folders (default: every one in shared/golden)")
    args = parser.parse_args(argv[1:])
    folders = args.folders
    if not folders:
        golden = os.path.join(os.environ.get("GALE_SHARED", os.path.join(os.path.dirname(__file__), "../../../shared")), "golden")
        folders = sorted(os.path.join(golden, d) for d in os.listdir(golden) if os.path.isdir(os.path.join(golden, d)))
    failures = sum(check_fixture(folder, getattr(torch, args.dtype)) for folder in folders)
    print(f"torch reference ({args.dtype}): {len(folders)} fixtures, {failures} quantities out of tolerance")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
