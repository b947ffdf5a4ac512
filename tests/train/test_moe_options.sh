#!/usr/bin/env bash
# test_moe_options: `gale train` with moe.aux_scope global and moe.capacity_factor, on one rank
# accumulating 2 micro-batches and on 2 ranks with parallel.ep=2 over the same global batch:
# the losses of 6 steps agree within 1e-5 relative and both drop the same number of routing
# slots at every step (metrics.jsonl's "dropped", > 0); the same run with aux_scope
# micro_batch trains differently (the key has an effect).
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
source "$GALE_SOURCE/tests/train/mpi_flags.sh"
steps=6
opts=(--set moe.capacity_factor=0.75 --set run.checkpoint_every=0)
write_config "$tmp/one.yaml" "$tmp/one" $steps 2 2
write_config "$tmp/ep2.yaml" "$tmp/ep2" $steps 2 1
write_config "$tmp/mb.yaml" "$tmp/mb" $steps 2 2
"$GALE_BIN" train "$tmp/one.yaml" "${opts[@]}" --set moe.aux_scope=global > "$tmp/one.log"
"$GALE_BIN" train "$tmp/mb.yaml" "${opts[@]}" > "$tmp/mb.log"
mpirun "${mpi_flags[@]}" -np 2 "$GALE_BIN" train "$tmp/ep2.yaml" "${opts[@]}" --set moe.aux_scope=global \
  --set parallel.ep=2 > "$tmp/ep2.log" 2>&1 || { cat "$tmp/ep2.log"; echo "FAIL: gale train with parallel.ep=2"; exit 1; }
grep -q "dropped" "$tmp/one.log" || { cat "$tmp/one.log"; echo "FAIL: the step lines do not report dropped slots"; exit 1; }
python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
def train(run):
    return [r for r in map(json.loads, open(f"{tmp}/{run}/metrics.jsonl")) if r.get("kind") == "train"]
one, ep2, mb = train("one"), train("ep2"), train("mb")
assert len(one) == len(ep2) == len(mb) == 6
worst = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(ep2, one))
apart = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(mb, one))
print(f"aux_scope global: ep=2 against one rank: losses within {worst:.2e}; micro_batch scope {apart:.2e} apart")
print("dropped slots per step:", [r["dropped"] for r in one], [r["dropped"] for r in ep2])
assert worst < 1e-5, "FAIL: ep=2 differs from one rank"
assert all(a["dropped"] == b["dropped"] > 0 for a, b in zip(one, ep2)), "FAIL: the ranks drop other slots than one rank"
assert apart > 1e-4, "FAIL: aux_scope global trains as micro_batch does"
PY
echo "moe options: aux_scope global and a capacity factor train on ep=2 as on one rank"
