#!/usr/bin/env bash
# test_lora_plan: `gale plan` of LoRA runs against a hand calculation of the adapters and the
# frozen base (Mistral 7B r=16 on every projection on one 24 GB and one 80 GB device; Mixtral
# 8x7B r=16 on attention and experts over 2 x 80 GB with expert parallelism), and the lora keys'
# refusals, each naming the key.
set -euo pipefail
: "${GALE_SOURCE:?run through ctest}" "${GALE_BIN:?run through ctest}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$GALE_SOURCE"
"$GALE_BIN" plan configs/lora-mistral-7b.yaml --device-memory 24 > "$tmp/mistral-24.txt"
"$GALE_BIN" plan configs/lora-mistral-7b.yaml --device-memory 80 --set backend.recompute=none > "$tmp/mistral-80.txt"
"$GALE_BIN" plan configs/lora-mixtral-8x7b.yaml --world 2 --ep 2 --device-memory 80 > "$tmp/mixtral.txt"
"$GALE_BIN" plan configs/sft-mistral-7b.yaml --set backend.precision=bf16 > "$tmp/mistral-full.txt"
python3 - "$tmp" <<'PY'
import re, sys
tmp = sys.argv[1]
GiB = 2 ** 30
h, I, L, kv, V, r = 4096, 14336, 32, 1024, 32000, 16

def read(name):
    text = open(f"{tmp}/{name}.txt").read()
    rows = dict((k.strip(), float(v)) for k, v in re.findall(r"^  ([^\d\n]+?) +([\d.]+) *$", text, re.M))
    rows["total"] = float(re.search(r"^  total\s+([\d.]+)", text, re.M).group(1))
    return rows, text

def adapter(n_in, n_out):  # lora_A [r, in] + lora_B [out, r]
    return r * (n_in + n_out)

def check(name, base, adapters, fits):
    rows, text = read(name)
    want = {"weights (compute copy)": 2 * (base + adapters) / GiB, "master weights": 4 * adapters / GiB,
            "gradients": 4 * adapters / GiB, "AdamW moments": 8 * adapters / GiB}
    for key, value in want.items():
        if abs(rows[key] - value) > 0.002 + 1e-4 * value:
            sys.exit(f"{name}: {key} {rows[key]} GiB, the hand calculation {value:.3f}")
    assert f"{adapters / 1e6:.1f}M adapter parameters" in text, text
    assert fits in text, text
    print(f"{name}: adapters {adapters / 1e6:.1f}M, total {rows['total']} GiB, {fits}")
    return rows["total"]

attn = adapter(h, h) * 2 + adapter(h, kv) * 2
mistral_base = 2 * V * h + L * (2 * h * h + 2 * h * kv + 3 * h * I + 2 * h) + h
mistral_adapters = L * (attn + 2 * adapter(h, I) + adapter(I, h))
assert mistral_adapters == 41943040  # PEFT's count for Mistral 7B, r = 16, every projection
check("mistral-24", mistral_base, mistral_adapters, "fits 24.0 GiB: yes")
lora80 = check("mistral-80", mistral_base, mistral_adapters, "fits 80.0 GiB: yes")
full, _ = read("mistral-full")  # the full fine-tune of the same model and batch
print(f"full fine-tune {full['total']} GiB, LoRA {lora80} GiB")
assert full["total"] > 4 * lora80, (full["total"], lora80)  # 16 bytes a parameter against 2
E_rank = 4  # 8 experts over 2 expert-parallel ranks
mixtral_base = 2 * V * h + L * (2 * h * h + 2 * h * kv + 8 * h + E_rank * 3 * h * I + 2 * h) + h
mixtral_adapters = L * (attn + E_rank * (2 * adapter(h, I) + adapter(I, h)))
check("mixtral", mixtral_base, mixtral_adapters, "fits 80.0 GiB: yes")
PY

expect_error() {  # expect_error MESSAGE ARGS...
  local want="$1"; shift
  if "$GALE_BIN" plan "$@" > "$tmp/out" 2> "$tmp/err"; then
    echo "FAIL: gale plan $* succeeded"; exit 1
  fi
  grep -qF -- "$want" "$tmp/err" || { echo "FAIL: gale plan $*: '$(cat "$tmp/err")' lacks '$want'"; exit 1; }
}
expect_error "lora.targets: unknown target 'qproj'" configs/lora-mistral-7b.yaml --set lora.targets=q_proj,qproj
expect_error "lora.targets: w1 matches no projection" configs/lora-mistral-7b.yaml --set lora.targets=w1
expect_error "lora.targets: gate_proj matches no projection" configs/lora-mixtral-8x7b.yaml --set lora.targets=gate_proj
expect_error "lora.rank" configs/lora-mistral-7b.yaml --set lora.rank=-1
expect_error "lora.alpha" configs/lora-mistral-7b.yaml --set lora.alpha=zero
expect_error "unknown key lora.ranks" configs/lora-mistral-7b.yaml --set lora.ranks=4
expect_error "lora.from" configs/lora-mistral-7b.yaml --set lora.from="$tmp/none"
echo "gale plan with LoRA: hand calculation and refusals ok"
