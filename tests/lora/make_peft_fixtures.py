"""Adapter fixtures made with PEFT, in the format of shared/golden/README.md extended with the
adapters: each folder holds a random tiny base model (config.json, model.safetensors), its
adapters as PEFT saves them (adapter_config.json, adapter_model.safetensors), and what PEFT
computes in float64 from them: logits, the losses, grad.<adapter tensor> for every adapter
tensor and after3.<adapter tensor> after three AdamW steps of the adapters (clip 1.0).

    python3 make_peft_fixtures.py OUTDIR      # OUTDIR/{llama,mistral,mixtral}-lora
    python3 make_peft_fixtures.py --from-adapter BASE ADAPTER OUTDIR
        # the same from a base folder and adapters PEFT loads (e.g. a gale LoRA checkpoint):
        # PeftModel.from_pretrained computes the expectations of what gale trained

Runs on Debian's torch 1.13 with transformers 4.40.2 and peft 0.10 (tests/bench/setup_bench.sh).
"""
import json
import os
import shutil
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers import MixtralConfig, MixtralForCausalLM

COMMON = dict(vocab_size=89, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="eager")
ADAMW = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
CLIP, STEPS, B, T = 1.0, 3, 2, 10

MIXTRAL = dict(rope_theta=1e6, sliding_window=None, num_local_experts=4, num_experts_per_tok=2,
               router_aux_loss_coef=0.02)
CASES = {
    # name: (config class, model class, extra config, LoRA targets, rank, alpha, rsLoRA[, modules_to_save])
    "llama-lora": (LlamaConfig, LlamaForCausalLM, dict(rope_theta=10000.0),
                   ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 4, 8, False),
    "mistral-lora": (MistralConfig, MistralForCausalLM, dict(rope_theta=1e6, sliding_window=None),
                     ["q_proj", "v_proj", "down_proj"], 8, 16, True),
    "mixtral-lora": (MixtralConfig, MixtralForCausalLM, MIXTRAL,
                     ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"], 4, 8, False),
    # the routers trained whole (gale's lora.train_router)
    "mixtral-router": (MixtralConfig, MixtralForCausalLM, MIXTRAL, ["q_proj", "w2"], 4, 8, False, ["gate"]),
}


def saved_name(name):
    """PEFT saves adapter tensors without the adapter's name, a module of modules_to_save under
    the module's own name."""
    return name.replace(".modules_to_save.default.", ".").replace(".default.", ".")


def losses(model, ids, labels, moe, coef):
    out = model(input_ids=ids, labels=labels, output_router_logits=True) if moe else \
        model(input_ids=ids, labels=labels)
    aux = out.aux_loss if moe else None
    ce = out.loss - coef * aux if moe else out.loss
    return out, ce, aux


def make(outdir, name, seed):
    cfg_cls, model_cls, extra, targets, rank, alpha, rslora, *to_save = CASES[name]
    torch.manual_seed(seed)
    cfg = cfg_cls(**COMMON, **extra)
    base = model_cls(cfg).float()
    folder = os.path.join(outdir, name)
    os.makedirs(folder, exist_ok=True)
    base.save_pretrained(folder, safe_serialization=True)
    lcfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                      use_rslora=rslora, modules_to_save=to_save[0] if to_save else None, task_type="CAUSAL_LM")
    model = get_peft_model(base, lcfg)
    # B starts at zero (PEFT's init): random B makes every gradient, A's too, non-trivial
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    expect(model, cfg, folder, seed)


def expect(model, cfg, folder, seed):
    """expected.safetensors and expected.json of a PeftModel into folder."""
    model = model.double()
    torch.set_default_dtype(torch.float64)  # transformers 4.40 builds Mistral's mask in the default dtype
    trainable = [(saved_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or n.endswith(".gate.weight") for n, _ in trainable), trainable
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    labels = ids.clone()
    labels[0, 3] = -100
    labels[1, 6:8] = -100
    moe = cfg.model_type == "mixtral"
    name = os.path.basename(folder)
    coef = getattr(cfg, "router_aux_loss_coef", 0.0)

    out, ce, aux = losses(model, ids, labels, moe, coef)
    out.loss.backward()
    tensors = {"input_ids": ids, "labels": labels, "logits": out.logits.detach().float().contiguous()}
    for n, p in trainable:
        tensors["grad." + n] = p.grad.detach().float().contiguous()
    info = {"case": name, "kind": cfg.model_type, "B": B, "T": T, "torch": torch.__version__,
            "peft_lora": model.peft_config["default"].to_dict(),
            "loss": out.loss.item(), "ce_loss": ce.item(),
            "conventions": {"adamw": {"lr": ADAMW["lr"], "betas": list(ADAMW["betas"]), "eps": ADAMW["eps"],
                                      "weight_decay": ADAMW["weight_decay"], "clip_grad_norm": CLIP,
                                      "steps": STEPS}}}
    if moe:
        info["aux_loss"] = aux.item()

    opt = torch.optim.AdamW([p for _, p in trainable], **ADAMW)
    adamw_losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        out, _, _ = losses(model, ids, labels, moe, coef)
        out.loss.backward()
        adamw_losses.append(out.loss.item())
        norms.append(torch.nn.utils.clip_grad_norm_([p for _, p in trainable], CLIP).item())
        opt.step()
    with torch.no_grad():
        adamw_losses.append(losses(model, ids, labels, moe, coef)[0].loss.item())
    for n, p in trainable:
        tensors["after%d.%s" % (STEPS, n)] = p.detach().float().contiguous()
    info["adamw_losses"] = adamw_losses
    info["adamw_grad_norms_before_clip"] = norms
    save_file(tensors, os.path.join(folder, "expected.safetensors"))
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(info, f, indent=2, default=lambda o: sorted(o) if isinstance(o, set) else str(o))


def from_adapter(base, adapter, folder):
    """A fixture of the base folder and the adapters PEFT loads from adapter."""
    os.makedirs(folder, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(base, name), folder)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(os.path.join(adapter, name), folder)
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    expect(model, model.config, folder, 2000)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "--from-adapter":
        from_adapter(*sys.argv[2:5])
        sys.exit(0)
    for i, case in enumerate(CASES):
        torch.set_default_dtype(torch.float32)
        make(sys.argv[1], case, 1000 + i)
