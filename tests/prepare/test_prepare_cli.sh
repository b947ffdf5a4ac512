#!/usr/bin/env bash
# test_prepare_cli: the `gale prepare` command line: --help; the shipped fortunes config
# (configs/prepare-fortunes.yaml) runs, with flags overriding its paths and seq_len; config
# and flag mistakes are errors naming the file and line or the flag; a missing input is
# named; corrupt compressed inputs are counted and named without stopping the run; progress
# lines appear when asked for.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}" "${GALE_SOURCE:?}"
work=$(mktemp -d /tmp/gale-test-prepare-cli-XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*"; exit 1; }
tok="$GALE_SHARED/tokenizers/mistral-v1.model"

"$GALE_BIN" prepare --help > help.txt || fail "--help exits non-zero"
grep -q -- "--near-threshold" help.txt || fail "--help does not list the keys"
"$GALE_BIN" --help > help.txt || fail "gale --help exits non-zero"
grep -q "prepare" help.txt || fail "gale --help does not list prepare"
# --version: the version, the backends (the CUDA one says why it cannot run, where it cannot)
# and the BLAS kernels
"$GALE_BIN" --version > version.txt || fail "gale --version exits non-zero"
grep -Eq '^gale [0-9]+\.[0-9]+\.[0-9]+$' version.txt || fail "gale --version: no version line"
grep -q '^backends: cpu (fp32, bf16)' version.txt || fail "gale --version: no backends line"
grep -q '^blas: OpenBLAS' version.txt || fail "gale --version: no blas line"

# expects: exit status 1 and the message on stderr
expect_error() {
  local want="$1"; shift
  if "$GALE_BIN" prepare "$@" > out.txt 2> err.txt; then fail "succeeded: $*"; fi
  grep -qF -- "$want" err.txt || { cat err.txt; fail "expected '$want' for: $*"; }
}
printf 'inputs: [a.txt]\ntokenizer: t.model\nseq_lenn: 5\n' > bad1.yaml
expect_error "bad1.yaml:3: unknown key 'seq_lenn'" bad1.yaml
printf 'inputs: a.txt\nmin_chars: -4\n' > bad2.yaml
expect_error "bad2.yaml:2: min_chars = -4 is out of range" bad2.yaml
expect_error "flag --seq-len: seq_len must be an integer, got 'abc'" --seq-len abc
expect_error "unknown key 'frobnicate'" --frobnicate 3
expect_error "no inputs" --tokenizer "$tok" --out o
echo "some text long enough to keep" > a.txt
expect_error "input 'missing.txt'" --input a.txt missing.txt --tokenizer "$tok" --out o
expect_error "missing.model" --input a.txt --tokenizer missing.model --out o
[ ! -e o ] && [ ! -e o.partial ] || fail "a failed run left o or o.partial behind"

# an unreadable input (corrupt zstd, truncated gzip) is counted and named; the rest goes on
printf '{"text": "a record that is long enough to keep"}\n' > good.jsonl
echo "this is not zstd data" > corrupt.jsonl.zst
for i in $(seq 1 2000); do echo "{\"text\": \"gzip record number $i with some words\"}"; done | gzip > full.jsonl.gz
head -c 2000 full.jsonl.gz > cut.jsonl.gz
"$GALE_BIN" prepare --input good.jsonl corrupt.jsonl.zst cut.jsonl.gz --tokenizer "$tok" --out damaged \
  --progress off 2> damaged.log || { cat damaged.log; fail "a corrupt input stopped the run"; }
grep -q "corrupt.jsonl.zst" damaged.log && grep -q "cut.jsonl.gz" damaged.log || { cat damaged.log; fail "unreadable inputs not named"; }
python3 -c '
import json, sys
r = json.load(open("damaged/report.json"))
if r["inputs"]["unreadable_files"] != 2 or r["documents"]["kept"] < 2:
    sys.exit("FAIL: damaged inputs: %s %s" % (r["inputs"], r["documents"]))
'

# the shipped config, with the paths and seq_len overridden by flags
if [ -r /usr/share/games/fortunes/fortunes ]; then
  "$GALE_BIN" prepare "$GALE_SOURCE/configs/prepare-fortunes.yaml" --tokenizer "$tok" --out fortunes \
    --removed removed.jsonl --seq-len 128 --progress on 2> run.log || { cat run.log; fail "fortunes config"; }
  grep -q "^read: .* docs" run.log || { cat run.log; fail "no progress lines with --progress on"; }
  python3 - <<'EOF'
import json, sys
m = json.load(open("fortunes/manifest.json"))
r = json.load(open("fortunes/report.json"))
if m["seq_len"] != 128:
    sys.exit(f"FAIL: the flag --seq-len did not override the config: {m['seq_len']}")
d = r["documents"]
if d["read"] < 10000 or d["kept"] < 0.9 * d["read"] or d["exact_duplicates"] == 0 or d["near_duplicates"] == 0:
    sys.exit(f"FAIL: unexpected fortunes counts {d}")
if d["read"] != d["rejected_total"] + d["exact_duplicates"] + d["near_duplicates"] + d["kept"]:
    sys.exit(f"FAIL: counts do not add up {d}")
removed = sum(1 for _ in open("removed.jsonl"))
if removed != d["read"] - d["kept"]:
    sys.exit(f"FAIL: {removed} removed lines for {d['read'] - d['kept']} removed documents")
if any("/it/" in i["path"] or i["path"].endswith((".dat", ".u8")) for i in m["inputs"]):
    sys.exit("FAIL: excluded inputs were read")
print(f"fortunes: {d['read']} read, {d['kept']} kept, {r['splits']['train']['tokens']} train tokens")
EOF
fi
echo "test_prepare_cli: ok"
