"""A hand-written PyTorch implementation of the Llama 2 / Mistral / Mixtral math contract in
docs/math.md: the peer that gale's CPU training step is benchmarked against, and
(checked by check_torch_reference.py) a second, independent reading of that contract.

It uses only torch tensor ops, never transformers: embeddings, RMSNorm, rotate-half RoPE,
GQA attention (causal, optional sliding window), SwiGLU MLP or the Mixtral MoE block
(softmax -> top-k -> renormalise, experts w2(silu(w1 x) * w3 x)), the router load-balancing
loss pooled over layers (HF form), cross-entropy with -100 labels, and a training step of
global-norm clipping to 1.0 followed by torch.optim.AdamW (betas 0.9/0.95, weight decay 0.1 on
2-D tensors only). Weights live in a dict keyed by the hub's tensor names, read from and
written to safetensors files with a small json+numpy codec (Debian ships no python3-safetensors).
"""

import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# safetensors: an 8-byte little-endian header length, a JSON header, then raw little-endian data.

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
}


def load_safetensors(path):
    """Every tensor of a safetensors file as a numpy array, keyed by name (bf16 is widened to f32)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        raise ValueError(f"{path}: header length {header_len} runs past the end of the file")
    header = json.loads(blob[8:8 + header_len])
    data = memoryview(blob)[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        shape = info["shape"]
        if info["dtype"] == "BF16":
            raw = np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32) << 16
            array = raw.view(np.float32)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            array = np.frombuffer(data[begin:end], dtype=np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {info['dtype']}")
        if array.size != math.prod(shape):
            raise ValueError(f"{path}: tensor {name}: {array.size} values for shape {shape}")
        tensors[name] = array.reshape(shape).copy()
    return tensors


_SAFETENSORS_NAMES = {np.dtype(v).newbyteorder("<"): k for k, v in _SAFETENSORS_DTYPES.items()}


def save_safetensors(path, tensors):
    """Writes numpy arrays (in the dict's order) as a safetensors file, to a temporary name
    that is renamed over path once complete."""
    header, chunks, offset = {}, [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder("<"))
        raw = array.tobytes()
        header[name] = {"dtype": _SAFETENSORS_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# config: both Hugging Face dialects (rope_theta at top level or under rope_parameters).

class ModelConfig:
    def __init__(self, hf):
        self.model_type = hf["model_type"]
        if self.model_type not in ("llama", "mistral", "mixtral"):
            raise ValueError(f"config.json: model_type {self.model_type!r} is not llama, mistral or mixtral")
        self.vocab_size = hf["vocab_size"]
        self.hidden_size = hf["hidden_size"]
        self.intermediate_size = hf["intermediate_size"]
        self.num_layers = hf["num_hidden_layers"]
        self.num_heads = hf["num_attention_heads"]
        self.num_kv_heads = hf.get("num_key_value_heads") or self.num_heads
        self.head_dim = hf.get("head_dim") or self.hidden_size // self.num_heads
        self.rms_norm_eps = hf["rms_norm_eps"]
        rope = hf.get("rope_parameters") or {}
        self.rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        self.sliding_window = hf.get("sliding_window") if self.model_type != "llama" else None
        self.tie_word_embeddings = hf.get("tie_word_embeddings", False)
        self.num_experts = hf.get("num_local_experts", 0) if self.model_type == "mixtral" else 0
        self.top_k = hf.get("num_experts_per_tok", 0)
        self.router_aux_loss_coef = hf.get("router_aux_loss_coef", 0.0)

    @classmethod
    def from_file(cls, path):
        with open(path) as f:
            return cls(json.load(f))

    def weight_shapes(self):
        """Every weight name of the hub layout with its shape, in the hub's order."""
        h, hd, i = self.hidden_size, self.head_dim, self.intermediate_size
        shapes = {"model.embed_tokens.weight": (self.vocab_size, h)}
        for l in range(self.num_layers):
            p = f"model.layers.{l}."
            shapes[p + "input_layernorm.weight"] = (h,)
            shapes[p + "self_attn.q_proj.weight"] = (self.num_heads * hd, h)
            shapes[p + "self_attn.k_proj.weight"] = (self.num_kv_heads * hd, h)
            shapes[p + "self_attn.v_proj.weight"] = (self.num_kv_heads * hd, h)
            shapes[p + "self_attn.o_proj.weight"] = (h, self.num_heads * hd)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
            if self.num_experts:
                shapes[p + "block_sparse_moe.gate.weight"] = (self.num_experts, h)
                for e in range(self.num_experts):
                    q = f"{p}block_sparse_moe.experts.{e}."
                    shapes[q + "w1.weight"] = (i, h)
                    shapes[q + "w2.weight"] = (h, i)
                    shapes[q + "w3.weight"] = (i, h)
            else:
                shapes[p + "mlp.gate_proj.weight"] = (i, h)
                shapes[p + "mlp.up_proj.weight"] = (i, h)
                shapes[p + "mlp.down_proj.weight"] = (h, i)
        shapes["model.norm.weight"] = (h,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes


# ---------------------------------------------------------------------------------------------
# the model

def rmsnorm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_tables(cfg, seq_len, dtype):
    """cos and sin, [T, head_dim], rotate-half layout: dimension i pairs with i + head_dim/2."""
    half = cfg.head_dim // 2
    inv_freq = cfg.rope_theta ** (-torch.arange(half, dtype=torch.float64) * 2.0 / cfg.head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attention_mask(cfg, seq_len):
    """Additive [T, T] mask: query i sees keys j <= i, and with a window W only i - W < j."""
    i = torch.arange(seq_len).unsqueeze(1)
    j = torch.arange(seq_len).unsqueeze(0)
    visible = j <= i
    if cfg.sliding_window:
        visible &= j > i - cfg.sliding_window
    return visible


def attention(cfg, w, p, x, cos, sin, visible):
    B, T, _ = x.shape
    hd = cfg.head_dim
    q = F.linear(x, w[p + "q_proj.weight"]).view(B, T, cfg.num_heads, hd).transpose(1, 2)
    k = F.linear(x, w[p + "k_proj.weight"]).view(B, T, cfg.num_kv_heads, hd).transpose(1, 2)
    v = F.linear(x, w[p + "v_proj.weight"]).view(B, T, cfg.num_kv_heads, hd).transpose(1, 2)
    q = apply_rope(q, cos, sin)
    k = apply_rope(k, cos, sin)
    group = cfg.num_heads // cfg.num_kv_heads
    # GQA: query head h reads kv head h // group; grouping queries avoids copying k and v.
    q = q.reshape(B, cfg.num_kv_heads, group * T, hd)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)
    scores = scores.view(B, cfg.num_kv_heads, group, T, T).masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(B, cfg.num_kv_heads, group * T, T)
    out = torch.matmul(probs, v).view(B, cfg.num_heads, T, hd)
    out = out.transpose(1, 2).reshape(B, T, cfg.num_heads * hd)
    return F.linear(out, w[p + "o_proj.weight"])


def dense_mlp(w, p, x):
    gate = F.linear(x, w[p + "gate_proj.weight"])
    up = F.linear(x, w[p + "up_proj.weight"])
    return F.linear(F.silu(gate) * up, w[p + "down_proj.weight"])


def moe_block(cfg, w, p, x):
    """Mixtral sparse MoE. Returns the output and the router logits [B*T, E] (for the aux loss)."""
    B, T, H = x.shape
    flat = x.reshape(B * T, H)
    router_logits = F.linear(flat, w[p + "gate.weight"])
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.promote_types(flat.dtype, torch.float32))
    top_weights, top_experts = torch.topk(probs, cfg.top_k, dim=-1)
    top_weights = (top_weights / top_weights.sum(dim=-1, keepdim=True)).to(flat.dtype)
    out = torch.zeros_like(flat)
    for e in range(cfg.num_experts):
        rows, slot = torch.where(top_experts == e)
        if rows.numel() == 0:
            continue
        xe = flat.index_select(0, rows)
        q = f"{p}experts.{e}."
        he = F.silu(F.linear(xe, w[q + "w1.weight"])) * F.linear(xe, w[q + "w3.weight"])
        ye = F.linear(he, w[q + "w2.weight"]) * top_weights[rows, slot].unsqueeze(-1)
        out.index_add_(0, rows, ye)
    return out.view(B, T, H), router_logits


def router_aux_loss(cfg, router_logits_per_layer):
    """HF load-balancing loss: all layers' rows pooled, E * sum_k sum_e f[k][e] * P[e]."""
    logits = torch.cat(router_logits_per_layer, dim=0)
    probs = torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
    _, chosen = torch.topk(probs, cfg.top_k, dim=-1)
    fraction = F.one_hot(chosen, cfg.num_experts).to(probs.dtype).mean(dim=0)  # [k, E]
    mean_prob = probs.mean(dim=0)  # [E]
    return cfg.num_experts * (fraction * mean_prob.unsqueeze(0)).sum()


def forward_logits(cfg, w, input_ids):
    """Logits [B, T, V] and the router logits of every layer (empty for dense models)."""
    B, T = input_ids.shape
    x = F.embedding(input_ids, w["model.embed_tokens.weight"])
    cos, sin = rope_tables(cfg, T, x.dtype)
    visible = attention_mask(cfg, T)
    router_logits = []
    for l in range(cfg.num_layers):
        p = f"model.layers.{l}."
        h = rmsnorm(x, w[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        x = x + attention(cfg, w, p + "self_attn.", h, cos, sin, visible)
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        if cfg.num_experts:
            y, logits_l = moe_block(cfg, w, p + "block_sparse_moe.", h)
            router_logits.append(logits_l)
        else:
            y = dense_mlp(w, p + "mlp.", h)
        x = x + y
    x = rmsnorm(x, w["model.norm.weight"], cfg.rms_norm_eps)
    head = w["model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"]
    return F.linear(x, head), router_logits


def targets_from_labels(labels):
    """transformers' causal-LM convention: position t predicts labels[t + 1]; the last has none."""
    return torch.cat((labels[:, 1:], torch.full_like(labels[:, :1], -100)), dim=1)


def loss_from_logits(cfg, logits, router_logits, targets):
    """(total loss, CE, aux or None): CE is the mean over targets that are not -100."""
    ce = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1), ignore_index=-100)
    if not cfg.num_experts:
        return ce, ce, None
    aux = router_aux_loss(cfg, router_logits)
    return ce + cfg.router_aux_loss_coef * aux, ce, aux


def forward(cfg, w, input_ids, labels):
    """Logits, total loss, CE and aux (or None) for a batch in the fixtures' labels convention."""
    logits, router_logits = forward_logits(cfg, w, input_ids)
    return (logits,) + loss_from_logits(cfg, logits, router_logits, targets_from_labels(labels))


# ---------------------------------------------------------------------------------------------
# weights and the training step

def weights_from_arrays(cfg, arrays, dtype):
    """Trainable tensors in the hub's order; every expected name must be present with its shape."""
    weights = {}
    for name, shape in cfg.weight_shapes().items():
        if name not in arrays:
            raise KeyError(f"weights: tensor {name} is missing")
        if tuple(arrays[name].shape) != shape:
            raise ValueError(f"weights: tensor {name} has shape {tuple(arrays[name].shape)}, config wants {shape}")
        weights[name] = torch.tensor(arrays[name], dtype=dtype).requires_grad_(True)
    return weights


def random_weights(cfg, dtype, seed, std=0.02):
    """A fresh model: matrices ~ N(0, std^2) with the output projections (o_proj, down_proj, w2)
    scaled by 1/sqrt(2 * layers), norm weights at 1."""
    generator = torch.Generator().manual_seed(seed)
    output_scale = 1.0 / math.sqrt(2 * cfg.num_layers)
    weights = {}
    for name, shape in cfg.weight_shapes().items():
        if len(shape) == 1:
            t = torch.ones(shape, dtype=dtype)
        else:
            scale = output_scale if name.endswith(("o_proj.weight", "down_proj.weight", "w2.weight")) else 1.0
            t = torch.randn(shape, generator=generator, dtype=torch.float32).mul_(std * scale).to(dtype)
        weights[name] = t.requires_grad_(True)
    return weights


def make_optimizer(weights, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
    """torch.optim.AdamW with decoupled weight decay on 2-D tensors only."""
    decay = [t for t in weights.values() if t.dim() == 2]
    no_decay = [t for t in weights.values() if t.dim() != 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def train_step(cfg, weights, optimizer, input_ids, targets, clip=1.0):
    """One step: forward, backward, global-norm clip, AdamW, with targets aligned to the inputs
    (position t predicts targets[t]; -100: none). Returns (loss, grad norm before clip)."""
    optimizer.zero_grad(set_to_none=True)
    logits, router_logits = forward_logits(cfg, weights, input_ids)
    loss, _, _ = loss_from_logits(cfg, logits, router_logits, targets)
    loss.backward()
    # An expert that no token chose has a zero gradient, not none: transformers keeps all experts
    # of a layer in one tensor (and gale all weights in one buffer), so AdamW still decays it and
    # moves it by its momentum, where torch would skip a tensor whose grad is None.
    for tensor in weights.values():
        if tensor.grad is None:
            tensor.grad = torch.zeros_like(tensor)
    norm = torch.nn.utils.clip_grad_norm_(list(weights.values()), clip)
    optimizer.step()
    return loss.detach(), norm
