# train_fixture: what the `gale train` script tests share (sourced, not a test itself): a
# scratch folder, the tiny prepared data of test_trainer, a tiny Mixtral run config, and
# the losses of a run's metrics.jsonl.
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$GALE_BUILD/test_trainer" --make-data "$tmp/data"

source "$GALE_SOURCE/tests/train/tiny_mixtral.sh"

# write_config FILE RUN_DIR STEPS MICRO_BATCH [GRAD_ACCUM]
write_config() {
  tiny_mixtral_model > "$1"
  cat >> "$1" <<YAML
data:
  sources:
    - path: $tmp/data
  seq_len: 16
  micro_batch: $4
  grad_accum: ${5:-1}
optim:
  lr: 1.0e-2
  min_lr: 1.0e-3
  warmup: 2
run:
  steps: $3
  seed: 11
  eval_every: 0
  checkpoint_every: 5
  keep_last: 2
  dir: $2
backend:
  threads: 1
YAML
}

# losses RUN_DIR: "step loss" per training step, full precision
losses() {
  python3 -c '
import json, sys
for line in open(sys.argv[1] + "/metrics.jsonl"):
    r = json.loads(line)
    if r.get("kind") == "train":
        print(r["step"], repr(r["loss"]))' "$1"
}
