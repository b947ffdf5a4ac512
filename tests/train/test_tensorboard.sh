#!/usr/bin/env bash
# test_tensorboard: gale train's TensorBoard event files, read back by the tensorboard package
# (its EventAccumulator, and its own masked CRC-32C over every frame), hold exactly the
# numbers of metrics.jsonl: every train and eval record's numbers at its step, as float32,
# and the per-layer expert load, for a straight run and for one stopped and resumed (two
# files). Needs the tensorboard venv that tests/bench/setup_bench.sh makes in .bench/tb.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
py="$GALE_SOURCE/.bench/tb/bin/python"
if ! [ -x "$py" ] || ! "$py" -c "import tensorboard" 2>/dev/null; then
  echo "SKIP: no tensorboard in $GALE_SOURCE/.bench/tb (tests/bench/setup_bench.sh makes it)"
  exit 77  # ctest: Skipped
fi
write_config "$tmp/run.yaml" "$tmp/straight" 8 2
sed -i 's/eval_every: 0/eval_every: 4/' "$tmp/run.yaml"
"$GALE_BIN" train "$tmp/run.yaml" > /dev/null
"$GALE_BIN" train "$tmp/run.yaml" --set run.dir="$tmp/resumed" --stop-at 5 > /dev/null
"$GALE_BIN" train "$tmp/run.yaml" --set run.dir="$tmp/resumed" > /dev/null
"$py" - "$tmp/straight" "$tmp/resumed" <<'PY'
import glob, json, struct, sys
import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

def frames_ok(path):
    data = open(path, "rb").read()
    at = n = 0
    while at < len(data):
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (crc_len,) = struct.unpack("<I", data[at + 8:at + 12])
        body = data[at + 12:at + 12 + length]
        (crc_body,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
        assert crc_len == masked_crc32c(header) and crc_body == masked_crc32c(body), f"{path}: bad CRC in frame {n}"
        at += 16 + length
        n += 1
    return n

for run in sys.argv[1:]:
    files = sorted(glob.glob(run + "/events.out.tfevents.*"))
    assert len(files) == (1 if run.endswith("straight") else 2), files
    frames = sum(frames_ok(f) for f in files)
    want = {}
    for line in open(run + "/metrics.jsonl"):
        r = json.loads(line)
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                want[(f"{r['kind']}/{k}", r["step"])] = np.float32(v)
        for layer in r.get("experts", []):
            for k in ("min", "max", "cv"):
                want[(f"experts/layer_{layer['layer']}/{k}", r["step"])] = np.float32(layer[k])
    ea = EventAccumulator(run, size_guidance={"scalars": 0})
    ea.Reload()
    got = {(tag, e.step): np.float32(e.value) for tag in ea.Tags()["scalars"] for e in ea.Scalars(tag)}
    assert set(got) == set(want), f"{run}: tags/steps differ: only in TB {sorted(set(got) - set(want))[:5]}, only in metrics {sorted(set(want) - set(got))[:5]}"
    bad = [(k, got[k], want[k]) for k in want if got[k] != want[k]]
    assert not bad, f"{run}: values differ: {bad[:5]}"
    steps = sorted({s for (t, s) in got if t == "eval/val_loss"})
    assert steps == [0, 4, 8], steps
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu", "eval/val_loss",
                "experts/layer_1/cv"):
        assert any(t == tag for t, _ in got), tag
    print(f"{run.rsplit('/', 1)[1]}: {len(files)} file(s), {frames} frames with good CRCs, {len(got)} scalars equal to metrics.jsonl")
PY
echo "tensorboard: event files read back by tensorboard equal metrics.jsonl"
