# Sourced by the LoRA tests: the tiny prepared data of test_trainer in $tmp/data, a tiny Mixtral
# base trained one step into an HF folder ($base), and write_lora_config for runs on top of it.
"$GALE_BUILD/test_trainer" --make-data "$tmp/data" > /dev/null
cat > "$tmp/base.yaml" <<YAML
model:
  model_type: mixtral
  vocab_size: 32000
  hidden_size: 32
  intermediate_size: 48
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 2
  num_local_experts: 4
  num_experts_per_tok: 2
  max_position_embeddings: 64
  router_aux_loss_coef: 0.02
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
