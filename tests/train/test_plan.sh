#!/usr/bin/env bash
# test_plan: `gale plan` against a hand calculation of Mistral 7B's and Mixtral 8x7B's arenas
# (bf16, micro-batch 1 x 4096, with and without recomputation, 8-way expert parallelism), and
# its refusals. The calculation is written out here, apart from the code that carves the arenas.
set -euo pipefail
: "${GALE_SOURCE:?run through ctest}" "${GALE_BIN:?run through ctest}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$GALE_SOURCE"
plan() {  # plan NAME CONFIG ARGS...: the plan's bytes per arena into $tmp/NAME
  local name=$1 config=$2
  shift 2
  "$GALE_BIN" plan "$config" --set backend.precision=bf16 "$@" > "$tmp/$name.txt"
}
plan mistral configs/sft-mistral-7b.yaml --world 8
plan mistral-rc configs/sft-mistral-7b.yaml --world 8 --set backend.recompute=layer
plan mixtral configs/cpt-mixtral-8x7b.yaml --world 64 --ep 8
plan mixtral-rc configs/cpt-mixtral-8x7b.yaml --world 64 --ep 8 --set backend.recompute=layer
python3 - "$tmp" <<'PY'
import re, sys
tmp = sys.argv[1]
GiB = 2 ** 30
h, I, L, kv, V, T, heads = 4096, 14336, 32, 1024, 32000, 4096, 32

def read(name):
    text = open(f"{tmp}/{name}.txt").read()
    rows = dict((k.strip(), float(v)) for k, v in re.findall(r"^  ([^\d\n]+?) +([\d.]+) *$", text, re.M))
    rows["total"] = float(re.search(r"^  total\s+([\d.]+)", text, re.M).group(1))
    return rows

def expect(name, experts, recompute):
    per_layer = 2 * h * h + 2 * h * kv + 2 * h + (8 * h + 3 * I * h if experts else 3 * I * h)
    params = 2 * V * h + L * per_layer + h  # one expert per layer on an EP-8 rank
    if experts:  # per token and layer: bf16 values, fp32 statistics and router, int32 routing;
        # under EP the k = 2 rows received for the rank's experts too (balanced routing)
        kept = 2 * (6 * h + 2 * kv + 4 * I + 2 * h + 2 * h) + 4 * (2 + heads + 8 + 1 + 2) + 4 * 6
    else:
        kept = 2 * (6 * h + 2 * kv + 2 * I) + 4 * (2 + heads)
    layers = (L - 1) * 2 * h + kept if recompute else L * kept
    expert_params, world = (L * 3 * I * h, 64) if experts else (0, 8)
    want = {
        "weights (compute copy)": 2 * params / GiB,
        "master weights": 4 * params / GiB,
        "gradients": 4 * params / GiB,
        # ZeRO-1: the experts' over the 8 data-parallel ranks holding them, the dense weights'
        # over every rank (8 without EP, 64 with EP 8)
        "AdamW moments": 8 * ((params - expert_params) / world + expert_params / 8) / GiB,
        "activations": (layers + 2 * 2 * h + 4) * T / GiB,  # + the final norm's input, output
    }
    got = read(name)
    for key, value in want.items():
        if abs(got[key] - value) > 0.002 + 1e-4 * value:  # the table prints 3 decimals
            sys.exit(f"{name}: {key} {got[key]} GiB, the hand calculation {value:.3f}")
    print(f"{name}: {len(want)} arenas as calculated, total {got['total']} GiB")

expect("mistral", 0, 0)
expect("mistral-rc", 0, 1)
expect("mixtral", 1, 0)
expect("mixtral-rc", 1, 1)
PY
grep -q "fits 80.0 GiB: yes" <("$GALE_BIN" plan configs/sft-mistral-7b.yaml --world 8 --device-memory 80 \
  --set backend.precision=bf16 --set backend.recompute=layer)
grep -q "fits 80.0 GiB: no" <("$GALE_BIN" plan configs/sft-mistral-7b.yaml --device-memory 80)

expect_error() {  # expect_error MESSAGE ARGS...
  local want="$1"; shift
  if "$GALE_BIN" plan "$@" > "$tmp/out" 2> "$tmp/err"; then
    echo "FAIL: gale plan $* succeeded"; exit 1
  fi
  grep -qF -- "$want" "$tmp/err" || { echo "FAIL: gale plan $*: '$(cat "$tmp/err")' lacks '$want'"; exit 1; }
}
expect_error "8 experts do not split over 3 expert-parallel ranks" configs/cpt-mixtral-8x7b.yaml --world 3 --ep 3
expect_error "--ep 8 does not divide --world 12" configs/cpt-mixtral-8x7b.yaml --world 12 --ep 8
expect_error "no config file given"
expect_error "$tmp/none.yaml: No such file" "$tmp/none.yaml"
expect_error "backend.recompute" configs/sft-mistral-7b.yaml --set backend.recompute=sometimes
echo "gale plan: hand calculation and refusals ok"
