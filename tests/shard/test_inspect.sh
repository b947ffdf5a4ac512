#!/usr/bin/env bash
# gale inspect over folders made by gale prepare: the summary's numbers agree with the
# manifest and report.json, --decode gives back the documents' text (and in SFT rows marks
# exactly the assistant's answer as the training target), --ids gives the row, and folders
# that disagree with their manifest, bad paths and bad flags are refused with the reason.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}"
gale="$GALE_BIN"
work=$(mktemp -d "${TMPDIR:-/tmp}/gale-inspect-XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
fail=0
check() {  # check DESCRIPTION COMMAND...
  local what="$1"; shift
  if ! "$@"; then echo "FAIL: $what"; fail=1; fi
}
expect_error() {  # expect_error STATUS TEXT COMMAND...: exits with STATUS, stderr holds TEXT
  local status="$1" text="$2"; shift 2
  local rc=0
  "$@" > out.txt 2> err.txt || rc=$?
  if [ "$rc" != "$status" ] || ! grep -qF -- "$text" err.txt; then
    echo "FAIL: '$*' exited $rc (want $status) with: $(cat err.txt) (want '$text')"; fail=1
  fi
}

python3 - <<'EOF'
import json, random
rng = random.Random(5)
words = "river stone cloud ember lantern quiet orbit meadow copper signal winter thread".split()
with open("docs.txt", "w") as f:
    for i in range(240):
        f.write(" ".join(rng.choice(words) for _ in range(rng.randint(4, 60))) + f" end{i}\n%\n")
with open("chat.jsonl", "w") as f:
    for i in range(60):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))
        a = " ".join(rng.choice(words) for _ in range(rng.randint(2, 20))) + f" answer{i}"
        f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
EOF
"$gale" prepare --input docs.txt --tokenizer "$GALE_SHARED/tokenizers/mistral-v1.model" --out pre --seq-len 64 \
  --text-mode separator --shard-rows 40 --val-fraction 0.1 > /dev/null 2>&1
"$gale" prepare --input chat.jsonl --kind sft --tokenizer "$GALE_SHARED/tokenizers/mistral-v3.model" --out sft \
  --seq-len 96 --val-fraction 0.1 > /dev/null 2>&1

# the text summary names what it shows
"$gale" inspect pre --shards > summary.txt
check "summary header" grep -q "kind       pretrain, packing concat, seq_len 64 (rows of 65 tokens)" summary.txt
check "summary tokenizer" grep -q "sha256 $(sha256sum "$GALE_SHARED/tokenizers/mistral-v1.model" | cut -c1-64)" summary.txt
check "summary shard list" grep -q "train-00001.h5 *train" summary.txt
check "summary report" grep -q "documents read *240" summary.txt

# the JSON summary agrees with the manifest and report.json
"$gale" inspect pre --json > summary.json
check "JSON summary agrees with manifest.json and report.json" python3 - <<'EOF'
import json, sys
s = json.load(open("summary.json"))
m = json.load(open("pre/manifest.json"))
r = json.load(open("pre/report.json"))
ok = True
for split in ("train", "val"):
    shards = [e for e in m["shards"] if e["split"] == split]
    got = s["splits"][split]
    ok &= got["shards"] == len(shards) and got["rows"] == sum(e["rows"] for e in shards)
    ok &= got["tokens"] == got["rows"] * 65
    ok &= got["real_tokens"] == sum(e["n_real_tokens"] for e in shards) == r["splits"][split]["tokens"]
    ok &= abs(got["padding_fraction"] - (1 - got["real_tokens"] / got["tokens"])) < 1e-12
    ok &= got["compression_ratio"] > 1 and got["raw_bytes"] == got["rows"] * 65 * 4
ok &= s["report"]["documents"]["read"] == 240 and s["tokenizer"]["vocab_size"] == 32000
sys.exit(0 if ok else 1)
EOF

# --decode: every document of a row is text of the input, with BOS/EOS shown
"$gale" inspect pre --decode 2 > row.txt
check "decode header" grep -q "^row 2 of train (train-00000.h5 row 2): 65 tokens" row.txt
check "decoded documents are input text" python3 - <<'EOF'
import re, sys
text = open("docs.txt", encoding="utf-8").read()
blocks = re.split(r"^--- document \d+, tokens \d+\.\.\d+( \(continued from the previous row\))? ---\n", open("row.txt", encoding="utf-8").read(), flags=re.M)
docs = [b for b in blocks[2::2]]
ok = len(docs) >= 1
for d in docs:
    d = d.rstrip("\n").split("\n--- padding")[0]
    body = d.replace("<s>", "").replace("</s>", "")
    ok &= body.strip() != "" and body.strip() in text
sys.exit(0 if ok else 1)
EOF
"$gale" inspect pre --decode 0 --split val > val.txt
check "decode of the val split" grep -q "^row 0 of val (val-00000.h5 row 0)" val.txt

# SFT: the marked span of each conversation is exactly the assistant's answer and its EOS
"$gale" inspect sft --decode 1 > sft.txt
check "SFT marks the assistant answers" python3 - <<'EOF'
import json, re, sys
answers = {json.loads(l)["messages"][1]["content"] for l in open("chat.jsonl", encoding="utf-8")}
out = open("sft.txt", encoding="utf-8").read().split("\n", 1)[1]  # past the header, which shows the marks
marked = re.findall("\u00ab(.*?)\u00bb", out, flags=re.S)
ok = len(marked) >= 1 and "[INST]" in out and "[/INST]" in out
for m in marked:
    ok &= m.endswith("</s>") and m[:-len("</s>")].strip() in answers
sys.exit(0 if ok else 1)
EOF

# --ids: the row as JSON
"$gale" inspect sft/train-00000.h5 --ids 0 > ids.json
check "--ids row" python3 -c "
import json; r = json.load(open('ids.json'))
assert len(r['tokens']) == len(r['segments']) == len(r['loss_mask']) == 97 and r['tokens'][0] == 1
assert 0 < sum(r['loss_mask']) < sum(s != 65535 for s in r['segments'])"

# refusals: a folder that disagrees with its manifest, bad paths, bad flags
cp -r pre broken
rm broken/train-00001.h5
expect_error 1 "broken: manifest.json lists train-00001.h5 but the file is missing" "$gale" inspect broken
cp -r pre edited
sed -i '0,/"rows": 40/s//"rows": 41/' edited/manifest.json
expect_error 1 "edited/train-00000.h5: has 40 rows, manifest.json says 41" "$gale" inspect edited
cp pre/train-00000.h5 pre/stray.h5
expect_error 1 "stray.h5 is not listed in manifest.json" "$gale" inspect pre
rm pre/stray.h5
expect_error 1 "missing: No such file or directory" "$gale" inspect missing
expect_error 1 "not a prepared folder (no manifest.json)" "$gale" inspect "$work"
expect_error 1 "docs.txt: not an HDF5 file" "$gale" inspect docs.txt
expect_error 1 "row 9999 is past the end of the train split" "$gale" inspect pre --decode 9999
expect_error 1 "needs --tokenizer PATH" "$gale" inspect pre/train-00000.h5 --decode 0
expect_error 1 "is not the tokenizer of these shards" "$gale" inspect pre/train-00000.h5 --decode 0 \
  --tokenizer "$GALE_SHARED/tokenizers/mistral-v3.model"
expect_error 2 "--decode takes a row number, not 'x'" "$gale" inspect pre --decode x
expect_error 2 "unknown option '--frobnicate'" "$gale" inspect pre --frobnicate
check "--help" "$gale" inspect --help > /dev/null

[ $fail -eq 0 ] && echo "test_inspect: all passed"
exit $fail
