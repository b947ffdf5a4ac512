#!/usr/bin/env bash
# test_lora_train: `gale train` with a lora section on a tiny Mixtral: checkpoints hold only the
# adapters (PEFT's files) and their moments; an interrupted run (with dropout) resumes to the
# same bits; a run
# starts from PEFT-format adapters (lora.from); gale eval --adapter on the base equals gale eval
# of the folder `gale merge` writes; the base folder is untouched.
set -euo pipefail
: "${GALE_SOURCE:?run through ctest}" "${GALE_BIN:?}" "${GALE_BUILD:?}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
source "$GALE_SOURCE/tests/lora/lora_run.sh"
sha_before=$(sha256sum "$base/model.safetensors")

write_lora_config "$tmp/a.yaml" "$tmp/a" 10 "dropout: 0.1"
"$GALE_BIN" train "$tmp/a.yaml" > "$tmp/a.log"
ckpt="$tmp/a/checkpoints/step_00000010"
ls "$ckpt" | sort | tr '\n' ' ' > "$tmp/files"
[ "$(cat "$tmp/files")" = "adapter_config.json adapter_model.safetensors generation_config.json optimizer.safetensors special_tokens_map.json tokenizer.model tokenizer_config.json trainer_state.json " ] ||
  { echo "FAIL: a LoRA checkpoint holds $(cat "$tmp/files")"; exit 1; }
grep -q '"base_model_name_or_path": "'"$base"'"' "$ckpt/adapter_config.json"
"$GALE_BIN" inspect "$ckpt" > "$tmp/inspect.txt"
grep -q "^adapters     LoRA r=4 alpha=8 dropout=0.1 on q_proj,v_proj,o_proj,w1,w2,w3" "$tmp/inspect.txt"
grep -q "^model        mixtral, 2 layers" "$tmp/inspect.txt"

# interrupted at step 5 and resumed: the same adapters and moments, bit for bit (the dropout
# masks are drawn from the seed and the step)
write_lora_config "$tmp/b.yaml" "$tmp/b" 10 "dropout: 0.1"
"$GALE_BIN" train "$tmp/b.yaml" --stop-at 5 > /dev/null
"$GALE_BIN" train "$tmp/b.yaml" > "$tmp/b.log"
grep -q "resuming from .*step_00000005" "$tmp/b.log"
for f in adapter_model.safetensors optimizer.safetensors; do
  cmp "$ckpt/$f" "$tmp/b/checkpoints/step_00000010/$f"
done
echo "resume: adapters and moments identical to the uninterrupted run"

# a run from PEFT-format adapters (lora.from) starts from them: one step at lr 1e-12 keeps them
write_lora_config "$tmp/c.yaml" "$tmp/c" 1 "from: $ckpt"
"$GALE_BIN" train "$tmp/c.yaml" --set optim.lr=1e-12 > "$tmp/c.log"
"$GALE_BIN" eval --checkpoint "$base" --adapter "$tmp/c/checkpoints/step_00000001" --data "$tmp/data" > "$tmp/from.txt"

# merged folder = base + adapters
"$GALE_BIN" merge --base "$base" --adapter "$ckpt" --out "$tmp/merged" > /dev/null
"$GALE_BIN" eval --checkpoint "$base" --adapter "$ckpt" --data "$tmp/data" > "$tmp/adapter.txt"
"$GALE_BIN" eval --checkpoint "$tmp/merged" --data "$tmp/data" > "$tmp/merged.txt"
"$GALE_BIN" eval --checkpoint "$base" --data "$tmp/data" > "$tmp/base.txt"
python3 - "$tmp" <<'PY'
import re, sys
tmp = sys.argv[1]
loss = {n: float(re.search(r"^loss\s+(\S+)", open(f"{tmp}/{n}.txt").read(), re.M).group(1))
        for n in ("adapter", "merged", "base", "from")}
assert abs(loss["merged"] - loss["adapter"]) <= 1e-5 * loss["adapter"], loss
assert abs(loss["from"] - loss["adapter"]) <= 1e-6 * loss["adapter"], loss
assert abs(loss["base"] - loss["adapter"]) > 1e-3, loss  # the adapters change the model
print("val loss: base %.6f, base + adapters %.6f, merged %.6f" % (loss["base"], loss["adapter"], loss["merged"]))
PY
[ "$(sha256sum "$base/model.safetensors")" = "$sha_before" ]

# a base of each dtype (f32; bf16 as Mistral's, Mixtral's; f16 as Llama 2's) merges into a
# folder of its dtype, sharded as save_pretrained does (--shard-size 20000 bytes: an index and
# several files): round(W + s B A) to nearest, per weight
for dtype in F32 BF16 F16; do
mkdir "$tmp/base-$dtype"
cp "$base/config.json" "$tmp/base-$dtype/"
python3 - "$base/model.safetensors" "$tmp/base-$dtype/model.safetensors" "$dtype" <<'PY'
import json, struct, sys
import numpy as np
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
out, blobs, at = {}, [], 0
for name, t in header.items():
    if name == "__metadata__":
        continue
    x = np.frombuffer(raw[8 + n + t["data_offsets"][0]:8 + n + t["data_offsets"][1]], dtype=np.float32)
    if sys.argv[3] == "BF16":
        u = x.view(np.uint32).astype(np.uint64)
        b = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    elif sys.argv[3] == "F16":
        b = x.astype(np.float16)
    else:
        b = x
    out[name] = {"dtype": sys.argv[3], "shape": t["shape"], "data_offsets": [at, at + b.nbytes]}
    blobs.append(b.tobytes())
    at += b.nbytes
h = json.dumps(out).encode()
h += b" " * (-len(h) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
PY
"$GALE_BIN" merge --base "$tmp/base-$dtype" --adapter "$ckpt" --out "$tmp/merged-$dtype" --shard-size 20000 > /dev/null
python3 - "$tmp/base-$dtype/model.safetensors" "$ckpt" "$tmp/merged-$dtype" "$dtype" <<'PY'
import json, os, struct, sys
import numpy as np
dtype = sys.argv[4]
def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    def get(name):
        t = header[name]
        data = raw[8 + n + t["data_offsets"][0]:8 + n + t["data_offsets"][1]]
        if t["dtype"] == "BF16":
            return (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(t["shape"])
        if t["dtype"] == "F16":
            return np.frombuffer(data, np.float16).astype(np.float32).reshape(t["shape"])
        return np.frombuffer(data, np.float32).reshape(t["shape"])
    return header, get
bh, base = load(sys.argv[1])
ah, ad = load(sys.argv[2] + "/adapter_model.safetensors")
# the merged folder: an index naming each tensor's file, files of at most 20000 bytes unless one
# tensor is larger, and no single model.safetensors
index = json.load(open(sys.argv[3] + "/model.safetensors.index.json"))
files = sorted(set(index["weight_map"].values()))
assert len(files) > 2 and not os.path.exists(sys.argv[3] + "/model.safetensors"), files
shards = {f: load(sys.argv[3] + "/" + f) for f in files}
for f, (h, _) in shards.items():
    sizes = [t["data_offsets"][1] - t["data_offsets"][0] for k, t in h.items() if k != "__metadata__"]
    assert sum(sizes) <= 20000 or len(sizes) == 1, (f, sizes)
    assert all(index["weight_map"][k] == f for k in h if k != "__metadata__")
assert json.load(open(sys.argv[3] + "/config.json"))["torch_dtype"] == {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]
cfg = json.load(open(sys.argv[2] + "/adapter_config.json"))
s = cfg["lora_alpha"] / cfg["r"]
# half a step: 2^-8 relative for bf16 (8 bits), 2^-11 for f16 (11 bits; 2^-25 absolute below its
# normals); f32: the sgemm's rounding (weights are ~0.02, an ulp 2e-9)
rel, floor = {"BF16": (2.0 ** -8, 1e-30), "F16": (2.0 ** -11, 2.0 ** -25), "F32": (1e-6, 1e-8)}[dtype]
changed, off = 0, 0
assert set(index["weight_map"]) == set(k for k in bh if k != "__metadata__")
for name in bh:
    if name == "__metadata__":
        continue
    mh, merged = shards[index["weight_map"][name]]
    assert mh[name]["dtype"] == dtype, (name, mh[name]["dtype"])
    want = base(name).astype(np.float64)
    key = "base_model.model." + name[:-len(".weight")]
    if key + ".lora_A.weight" in ah:
        want = want + s * ad(key + ".lora_B.weight").astype(np.float64) @ ad(key + ".lora_A.weight").astype(np.float64)
        changed += 1
    got = merged(name).astype(np.float64)
    off += int(np.sum(np.abs(got - want) > np.abs(want) * rel + floor))
assert changed > 0 and off == 0, (changed, off)
print("%s merge into %d shards: %d projections folded, every weight rounded to nearest" % (dtype, len(files), changed))
PY
done
"$GALE_BIN" eval --checkpoint "$tmp/merged-F32" --data "$tmp/data" > "$tmp/merged-sharded.txt"
cmp <(grep "^loss" "$tmp/merged.txt") <(grep "^loss" "$tmp/merged-sharded.txt")

# --out is published whole: a merge killed while it writes (a file size limit: SIGXFSZ) leaves
# an earlier merged folder as it was and no DIR.tmp; a second merge replaces it; the base, the
# adapter and a folder that is not a model's are refused, untouched
before=$(cd "$tmp/merged-F32" && sha256sum * | sha256sum)
if (ulimit -f 8; "$GALE_BIN" merge --base "$base" --adapter "$ckpt" --out "$tmp/merged-F32") 2> /dev/null; then
  echo "FAIL: a merge past its file size limit succeeded"; exit 1
fi
[ "$(cd "$tmp/merged-F32" && sha256sum * | sha256sum)" = "$before" ] || { echo "FAIL: a killed merge changed --out"; exit 1; }
"$GALE_BIN" merge --base "$base" --adapter "$ckpt" --out "$tmp/merged-F32" > /dev/null
[ ! -e "$tmp/merged-F32.tmp" ] && [ ! -e "$tmp/merged-F32.old" ] && [ -f "$tmp/merged-F32/model.safetensors" ] &&
  [ ! -e "$tmp/merged-F32/model.safetensors.index.json" ] || { echo "FAIL: a second merge did not replace --out"; exit 1; }
mkdir "$tmp/notes" && echo keep > "$tmp/notes/todo.txt"
for out in "$base" "$ckpt" "$tmp/notes"; do
  if "$GALE_BIN" merge --base "$base" --adapter "$ckpt" --out "$out" 2> "$tmp/refused.txt"; then
    echo "FAIL: gale merge --out $out was not refused"; exit 1
  fi
  grep -q -- "--out $out" "$tmp/refused.txt" || { echo "FAIL: the refusal does not name --out $out"; cat "$tmp/refused.txt"; exit 1; }
done
[ "$(cat "$tmp/notes/todo.txt")" = keep ] && [ -f "$base/model.safetensors" ] || { echo "FAIL: a refused merge touched a folder"; exit 1; }
echo "gale merge: a killed merge leaves --out as it was, a second one replaces it, base / adapter / other folders refused"

# gale merge streams: its peak RSS does not grow with the model (the old merge held the merged
# weights and a converted copy): random Mixtrals of 1 and 6 layers (71 and 344 MB of f32
# weights, tensors of at most 8.4 MB), merged with adapters on q_proj and w1
python3 - "$tmp" <<'PY'
import json, os, struct, subprocess, sys
import numpy as np
tmp, gale = sys.argv[1], os.environ["GALE_BIN"]
H, I, E, V = 512, 1024, 8, 4096

def write(path, shapes):
    header, at = {}, 0
    for k, shape in shapes.items():
        header[k] = {"dtype": "F32", "shape": list(shape), "data_offsets": [at, at + 4 * int(np.prod(shape))]}
        at = header[k]["data_offsets"][1]
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for shape in shapes.values():
            f.write((rng.standard_normal(shape, dtype=np.float32) * 0.02).tobytes())
    return at

def merge(layers):
    """The model's bytes and gale merge's peak RSS in bytes."""
    d = f"{tmp}/big{layers}"
    cfg = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": V, "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": layers, "num_attention_heads": 8, "num_key_value_heads": 8,
           "num_local_experts": E, "num_experts_per_tok": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
           "rope_theta": 1e6, "tie_word_embeddings": False, "torch_dtype": "float32"}
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    for l in range(layers):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                       p + "block_sparse_moe.gate.weight": (E, H)})
        shapes.update({p + f"self_attn.{n}_proj.weight": (H, H) for n in "qkvo"})
        for e in range(E):
            shapes.update({p + f"block_sparse_moe.experts.{e}.{w}.weight": s
                           for w, s in (("w1", (I, H)), ("w2", (H, I)), ("w3", (I, H)))})
    os.makedirs(f"{d}/base")
    os.makedirs(f"{d}/adapter")
    json.dump(cfg, open(f"{d}/base/config.json", "w"))
    size = write(f"{d}/base/model.safetensors", shapes)
    adapters = {}
    for k, s in shapes.items():
        if k.endswith(("q_proj.weight", "w1.weight")):
            m = "base_model.model." + k[:-len(".weight")]
            adapters.update({m + ".lora_A.weight": (8, s[1]), m + ".lora_B.weight": (s[0], 8)})
    write(f"{d}/adapter/adapter_model.safetensors", adapters)
    json.dump({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "w1"]},
              open(f"{d}/adapter/adapter_config.json", "w"))
    p = subprocess.Popen([gale, "merge", "--base", f"{d}/base", "--adapter", f"{d}/adapter", "--out", f"{d}/merged"],
                         stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    assert status == 0, status
    subprocess.run(["rm", "-rf", d], check=True)
    return size, usage.ru_maxrss * 1024

(small, peak_small), (big, peak_big) = merge(1), merge(6)
print("gale merge: peak RSS %.1f MB for %.0f MB of weights, %.1f MB for %.0f MB" %
      (peak_small / 1e6, small / 1e6, peak_big / 1e6, big / 1e6))
assert peak_big - peak_small < 2 * 4 * V * H, (peak_small, peak_big)  # two of its largest tensors
PY

# data parallelism: 2 ranks x 2 rows (ZeRO-1 splitting the adapters' moments) give 1 rank's
# losses over 2 micro-batches of 2 rows, to rounding
if command -v mpirun > /dev/null; then
  mpi_flags=(--oversubscribe)
  [ "$(id -u)" -ne 0 ] || mpi_flags+=(--allow-run-as-root)
  write_lora_config "$tmp/one.yaml" "$tmp/one" 6
  "$GALE_BIN" train "$tmp/one.yaml" --set data.micro_batch=2 --set data.grad_accum=2 > /dev/null
  mpirun "${mpi_flags[@]}" -np 2 "$GALE_BIN" train "$tmp/one.yaml" --set data.micro_batch=2 --set optim.zero=true \
    --set run.dir="$tmp/two" > "$tmp/two.log" 2>&1 || { cat "$tmp/two.log"; exit 1; }
  python3 - "$tmp/one/metrics.jsonl" "$tmp/two/metrics.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(p) if '"train"' in l] for p in sys.argv[1:3])
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
assert len(a) == len(b) == 6 and worst < 1e-5, (a, b)
print("LoRA on 2 ranks (ZeRO-1) = 1 rank accumulating 2 micro-batches: largest relative difference %.1e" % worst)
PY
fi

expect_error() {  # expect_error MESSAGE ARGS...
  local want="$1"; shift
  if "$GALE_BIN" "$@" > "$tmp/out" 2> "$tmp/err"; then echo "FAIL: gale $* succeeded"; exit 1; fi
  grep -qF -- "$want" "$tmp/err" || { echo "FAIL: gale $*: '$(cat "$tmp/err")' lacks '$want'"; exit 1; }
}
expect_error "lora.dropout" train "$tmp/a.yaml" --set lora.dropout=1.5
expect_error "adapter_config.json" merge --base "$base" --adapter "$tmp/none" --out "$tmp/m2"
sed -i 's/"r": 4/"r": 5/' "$tmp/c/checkpoints/step_00000001/adapter_config.json"
expect_error "is not [5, 32]" eval --checkpoint "$base" --adapter "$tmp/c/checkpoints/step_00000001" --data "$tmp/data"
sed -i 's/"modules_to_save": null/"modules_to_save": ["lm_head"]/' "$tmp/c/checkpoints/step_00000001/adapter_config.json"
expect_error "modules_to_save must be null or [\"gate\"]" eval --checkpoint "$base" --adapter "$tmp/c/checkpoints/step_00000001" --data "$tmp/data"
echo "LoRA training, resume, lora.from, eval --adapter and merge ok"
