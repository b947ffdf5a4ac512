# tiny_mixtral.sh (sourced): tiny_mixtral_model prints the model: section of the tiny Mixtral
# (2 layers, 4 experts, top-2) that the gale train and LoRA script tests train.
tiny_mixtral_model() {
  cat <<YAML
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
YAML
}
