# Sourced by the LoRA tests: the tiny prepared data of test_trainer in $tmp/data, a tiny Mixtral
# base trained one step into an HF folder ($base), and write_lora_config for runs on top of it.
"$GALE_BUILD/test_trainer" --make-data "$tmp/data" > /dev/null
source "$GALE_SOURCE/tests/train/tiny_mixtral.sh"
tiny_mixtral_model > "$tmp/base.yaml"
cat >> "$tmp/base.yaml" <<YAML
data:
  sources: [$tmp/data]
  seq_len: 16
  micro_batch: 4
run:
  steps: 1
  seed: 11
  dir: $tmp/base
backend:
  threads: 1
YAML
"$GALE_BIN" train "$tmp/base.yaml" > /dev/null
base="$tmp/base/checkpoints/step_00000001"

# write_lora_config FILE RUN_DIR STEPS [EXTRA LORA KEYS...]
write_lora_config() {
  local file=$1 dir=$2 steps=$3
  shift 3
  cat > "$file" <<YAML
model:
  from: $base
data:
  sources: [$tmp/data]
  seq_len: 16
  micro_batch: 4
optim:
  lr: 1.0e-2
run:
  steps: $steps
  seed: 11
  checkpoint_every: 5
  dir: $dir
backend:
  threads: 1
lora:
  rank: 4
  alpha: 8
  targets: [q_proj, v_proj, o_proj, w1, w2, w3]
YAML
  for kv in "$@"; do echo "  $kv" >> "$file"; done
}
