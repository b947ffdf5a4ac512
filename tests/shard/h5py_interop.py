"""Shards between gale and the standard HDF5 zstd plugin (h5py + hdf5plugin), both ways.

gale -> h5py: folders made by `gale prepare` (pretraining and SFT) read with h5py: attributes
exactly as docs/formats.md lists them, dataset types, shapes, chunking and the filter pipeline
(shuffle, zstd 32015, then Fletcher-32 over the stored bytes), values identical to what gale
reads (`gale inspect --ids`),
n_real_tokens equal to the non-padding count, manifest rows and SHA-256 equal to the files.

h5py -> gale: shards written by h5py with hdf5plugin.Zstd (uint16 and uint32 tokens, a loss
mask, other chunk shapes and levels, string attributes fixed and variable length) read by gale
value for value, and their folder passing `gale inspect --verify`; foreign and truncated
files refused with a message and exit status 1.

usage: h5py_interop.py GALE SHARED_DIR WORK_DIR
"""
import hashlib
import json
import os
import random
import subprocess
import sys

try:
    import h5py
    import hdf5plugin
    import numpy as np
except ImportError as e:
    print(f"SKIP: {e} (launch/setup.sh installs hdf5plugin: "
          "/usr/bin/python3 -m pip install --break-system-packages --no-deps hdf5plugin)")
    sys.exit(77)

GALE, SHARED, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
failures = checks = 0


def check(cond, what):
    global failures, checks
    checks += 1
    if not cond:
        print(f"FAIL {what}")
        failures += 1


def gale(*args, ok=True):
    r = subprocess.run([GALE, *args], capture_output=True, text=True)
    if ok and r.returncode != 0:
        raise SystemExit(f"FAIL gale {' '.join(args)}: exit {r.returncode}\n{r.stderr}")
    return r


def gale_row(path, row, split=None):
    args = ["inspect", path, "--ids", str(row)] + (["--split", split] if split else [])
    return json.loads(gale(*args).stdout)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- gale -> h5py

def make_inputs():
    rng = random.Random(7)
    words = ("the quick brown fox jumps over lazy dog shard zstd filter gale naïve café "
             "Ünïcödé 数据 данные 42 3.14 x_y").split()
    with open(os.path.join(WORK, "docs.txt"), "w", encoding="utf-8") as f:
        for i in range(400):
            n = rng.randint(5, 90)
            f.write(" ".join(rng.choice(words) for _ in range(n)) + f" #{i}\n%\n")
    with open(os.path.join(WORK, "chat.jsonl"), "w", encoding="utf-8") as f:
        for i in range(150):
            q = " ".join(rng.choice(words) for _ in range(rng.randint(2, 25)))
            a = " ".join(rng.choice(words) for _ in range(rng.randint(2, 40)))
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a + f" #{i}"}]}) + "\n")


def check_gale_folder(folder, tokenizer, kind):
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    tok_sha = sha256_file(tokenizer)
    check(manifest["tokenizer"]["sha256"] == tok_sha, f"{folder}: manifest tokenizer sha256")
    check(len(manifest["shards"]) >= 2, f"{folder}: expected several shards")
    split_rows = {"train": 0, "val": 0}
    for entry in manifest["shards"]:
        path = os.path.join(folder, entry["file"])
        name = f"{folder}/{entry['file']}"
        check(sha256_file(path) == entry["sha256"], f"{name}: manifest sha256")
        with h5py.File(path, "r") as h:
            a = h.attrs
            check(a["format"] == "gale-shard" and isinstance(a["format"], str), f"{name}: format attribute")
            check(int(a["version"]) == 1, f"{name}: version")
            check(int(a["seq_len"]) == 64, f"{name}: seq_len")
            check(int(a["vocab_size"]) == manifest["tokenizer"]["vocab_size"], f"{name}: vocab_size")
            check(a["tokenizer_sha256"] == tok_sha, f"{name}: tokenizer_sha256")
            check(int(a["bos_id"]) == 1 and int(a["eos_id"]) == 2, f"{name}: bos/eos")
            check(a["kind"] == kind, f"{name}: kind")
            check(a["packing"] == ("best_fit" if kind == "sft" else "concat"), f"{name}: packing")
            check(sorted(a.keys()) == sorted(["format", "version", "seq_len", "vocab_size", "tokenizer_sha256",
                                              "bos_id", "eos_id", "kind", "packing", "n_docs", "n_real_tokens"]),
                  f"{name}: attribute set {sorted(a.keys())}")
            want_sets = {"tokens", "segments"} | ({"loss_mask"} if kind == "sft" else set())
            check(set(h.keys()) == want_sets, f"{name}: datasets {set(h.keys())}")
            tokens, segments = h["tokens"], h["segments"]
            rows = tokens.shape[0]
            check(rows == entry["rows"], f"{name}: rows {rows} vs manifest {entry['rows']}")
            split_rows[entry["split"]] += rows
            for d, dtype in [(tokens, "uint16"), (segments, "uint16")] + \
                    ([(h["loss_mask"], "uint8")] if kind == "sft" else []):
                check(d.dtype == np.dtype(dtype), f"{name}/{d.name}: dtype {d.dtype}")
                check(d.shape == (rows, 65) and d.maxshape == (None, 65), f"{name}/{d.name}: shape {d.shape}")
                check(d.chunks is not None and d.chunks[1] == 65 and 1 <= d.chunks[0] <= 256,
                      f"{name}/{d.name}: chunks {d.chunks}")
                filters = d.id.get_create_plist()
                pipeline = [filters.get_filter(i)[0] for i in range(filters.get_nfilters())]
                check(pipeline == [h5py.h5z.FILTER_SHUFFLE, 32015, h5py.h5z.FILTER_FLETCHER32],
                      f"{name}/{d.name}: filters {pipeline}")
                check(filters.get_filter(1)[2] == (3,), f"{name}/{d.name}: zstd cd_values {filters.get_filter(1)[2]}")
            t, s = tokens[:], segments[:]
            m = h["loss_mask"][:] if kind == "sft" else (s != 65535).astype(np.uint8)
            check(int(a["n_real_tokens"]) == int((s != 65535).sum()), f"{name}: n_real_tokens")
            check(int(t.max()) < int(a["vocab_size"]), f"{name}: token ids in the vocabulary")
            check(not (m.astype(bool) & (s == 65535)).any(), f"{name}: loss mask at padding")
            if kind == "sft":
                check(0 < int(m.sum()) < int((s != 65535).sum()), f"{name}: loss mask marks part of the tokens")
            for r in sorted({0, rows // 2, rows - 1}):
                g = gale_row(path, r)
                check(g["tokens"] == t[r].tolist() and g["segments"] == s[r].tolist()
                      and g["loss_mask"] == m[r].tolist(), f"{name} row {r}: gale and h5py differ")
    for split, rows in split_rows.items():
        check(manifest["totals"][split]["rows"] == rows, f"{folder}: totals of {split}")


def test_gale_to_h5py():
    make_inputs()
    v1 = os.path.join(SHARED, "tokenizers", "mistral-v1.model")
    v3 = os.path.join(SHARED, "tokenizers", "mistral-v3.model")
    pre, sft = os.path.join(WORK, "pre"), os.path.join(WORK, "sft")
    gale("prepare", "--input", os.path.join(WORK, "docs.txt"), "--tokenizer", v1, "--out", pre, "--seq-len", "64",
         "--text-mode", "separator", "--shard-rows", "150", "--val-fraction", "0.1", "--dedup", "none")
    gale("prepare", "--input", os.path.join(WORK, "chat.jsonl"), "--tokenizer", v3, "--out", sft, "--kind", "sft",
         "--seq-len", "64", "--shard-rows", "40", "--val-fraction", "0.1", "--dedup", "none")
    check_gale_folder(pre, v1, "pretrain")
    check_gale_folder(sft, v3, "sft")
    # h5dump (HDF5's own tool) shows the pipeline: shuffle, then the registered zstd filter
    dump = subprocess.run(["h5dump", "-pH", os.path.join(pre, "train-00000.h5")], capture_output=True, text=True)
    check(dump.returncode == 0, f"h5dump exit {dump.returncode}: {dump.stderr}")
    out = dump.stdout
    check(out.count("PREPROCESSING SHUFFLE") == 2 and out.count("FILTER_ID 32015") == 2,
          "h5dump -pH: shuffle and zstd 32015 on /tokens and /segments")
    check(out.find("PREPROCESSING SHUFFLE") < out.find("FILTER_ID 32015") < out.find("CHECKSUM FLETCHER32"),
          "h5dump -pH: shuffle, zstd, then Fletcher-32")
    # and h5dump decodes the values with the standard zstd plugin on HDF5_PLUGIN_PATH
    shard = os.path.join(pre, "train-00000.h5")
    env = dict(os.environ, HDF5_PLUGIN_PATH=hdf5plugin.PLUGIN_PATH)
    dump = subprocess.run(["h5dump", "-d", "/tokens", "-s", "0,0", "-c", "3,20", shard], capture_output=True,
                          text=True, env=env)
    data = dump.stdout.split("DATA {", 1)[-1].split("}", 1)[0]
    values = [int(v) for line in data.splitlines() if "):" in line for v in line.split("):")[1].split(",") if v.strip()]
    with h5py.File(shard, "r") as h:
        want = h["tokens"][0:3, 0:20].ravel().tolist()
    check(dump.returncode == 0 and values == want, f"h5dump with hdf5plugin's zstd reads the tokens: {dump.stderr}")


# ---------------------------------------------------------------- h5py -> gale

def synthetic_rows(rng, n, row_len, vocab, sft):
    tokens = np.zeros((n, row_len), dtype=np.int64)
    segments = np.full((n, row_len), 65535, dtype=np.uint16)
    mask = np.zeros((n, row_len), dtype=np.uint8)
    docs = 0
    for r in range(n):
        end = row_len - (rng.randint(0, row_len // 2) if r % 3 == 0 else 0)
        j, seg = 0, 0
        while j < end:
            length = min(rng.randint(2, 12), end - j)
            segments[r, j:j + length] = seg
            tokens[r, j:j + length] = [rng.randrange(3, vocab) for _ in range(length)]
            tokens[r, j] = 1
            if sft:
                mask[r, j + length // 2:j + length] = 1
            j += length
            seg += 1
            docs += 1
    return tokens, segments, mask, docs


def write_h5py_shard(path, seq_len, vocab, kind, rows, tok_sha, chunk_rows, level, fixed_strings, rng):
    sft = kind == "sft"
    tokens, segments, mask, docs = synthetic_rows(rng, rows, seq_len + 1, vocab, sft)
    dtype = np.uint16 if vocab <= 65536 else np.uint32
    string = (lambda v: np.bytes_(v)) if fixed_strings else (lambda v: v)
    with h5py.File(path, "w") as h:
        opts = dict(chunks=(chunk_rows, seq_len + 1), maxshape=(None, seq_len + 1), shuffle=True,
                    **hdf5plugin.Zstd(clevel=level))
        h.create_dataset("tokens", data=tokens.astype(dtype), **opts)
        h.create_dataset("segments", data=segments, **opts)
        if sft:
            h.create_dataset("loss_mask", data=mask, **opts)
        h.attrs["format"] = string("gale-shard")
        h.attrs["version"] = np.int32(1)
        h.attrs["seq_len"] = np.int64(seq_len)
        h.attrs["vocab_size"] = np.int64(vocab)
        h.attrs["tokenizer_sha256"] = string(tok_sha)
        h.attrs["bos_id"] = np.int64(1)
        h.attrs["eos_id"] = np.int64(2)
        h.attrs["kind"] = string(kind)
        h.attrs["packing"] = string("best_fit" if sft else "concat")
        h.attrs["n_docs"] = np.int64(docs)
        h.attrs["n_real_tokens"] = np.int64(int((segments != 65535).sum()))
    m = mask if sft else (segments != 65535).astype(np.uint8)
    return tokens, segments, m, docs


def write_h5py_folder(folder, seq_len, vocab, kind, shards, tok_sha, rng):
    os.makedirs(folder, exist_ok=True)
    entries, data = [], {}
    for i, (split, rows, chunk_rows, level, fixed) in enumerate(shards):
        name = f"{split}-{i:05d}.h5"
        path = os.path.join(folder, name)
        t, s, m, docs = write_h5py_shard(path, seq_len, vocab, kind, rows, tok_sha, chunk_rows, level, fixed, rng)
        data[name] = (t, s, m, docs)
        entries.append({"file": name, "split": split, "rows": rows, "n_docs": docs,
                        "n_real_tokens": int((s != 65535).sum()), "sha256": sha256_file(path)})
    manifest = {"format": "gale-dataset", "version": 1, "created_at": "2026-01-01T00:00:00Z", "kind": kind,
                "packing": "best_fit" if kind == "sft" else "concat", "seq_len": seq_len,
                "tokenizer": {"path": "none.model", "sha256": tok_sha, "vocab_size": vocab, "bos_id": 1, "eos_id": 2},
                "inputs": [], "shards": entries}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return data


def test_h5py_to_gale():
    rng = random.Random(11)
    sha = hashlib.sha256(b"a tokenizer").hexdigest()
    pre = os.path.join(WORK, "h5py-pre")
    sft = os.path.join(WORK, "h5py-sft")
    folders = [
        (pre, "pretrain", 32000, write_h5py_folder(pre, 31, 32000, "pretrain",
                                                   [("train", 123, 7, 5, False), ("val", 20, 64, 1, True)], sha, rng)),
        (sft, "sft", 100000, write_h5py_folder(sft, 40, 100000, "sft",
                                               [("train", 57, 16, 9, False), ("train", 9, 3, 3, True)], sha, rng)),
    ]
    for folder, kind, vocab, data in folders:
        summary = json.loads(gale("inspect", folder, "--verify", "--json").stdout)
        for split in ("train", "val"):
            want = [(n, d) for n, d in data.items() if n.startswith(split)]
            got = summary["splits"][split]
            check(got["rows"] == sum(len(d[0]) for _, d in want), f"{folder}: {split} rows")
            check(got["real_tokens"] == sum(int((d[1] != 65535).sum()) for _, d in want), f"{folder}: {split} tokens")
            check(got["docs"] == sum(d[3] for _, d in want), f"{folder}: {split} docs")
        for name, (t, s, m, docs) in data.items():
            path = os.path.join(folder, name)
            shard = json.loads(gale("inspect", path, "--json").stdout)
            check(shard["token_bytes"] == (2 if vocab <= 65536 else 4), f"{path}: token bytes")
            check(shard["loss_mask"] == (kind == "sft"), f"{path}: loss mask present")
            # the first rows (first chunks), then a sample through to the last row
            for r in sorted(set(range(min(len(t), 9))) | set(range(9, len(t), 11)) | {len(t) - 1}):
                g = gale_row(path, r)
                if g["tokens"] != t[r].tolist() or g["segments"] != s[r].tolist() or g["loss_mask"] != m[r].tolist():
                    check(False, f"{path} row {r}: gale reads other values than h5py wrote")
                    break
        if kind == "sft":
            check(int(max(d[0].max() for d in data.values())) > 65535, "uint32 shard holds ids above 65535")


def test_refusals():
    rng = random.Random(3)
    sha = hashlib.sha256(b"x").hexdigest()
    foreign = os.path.join(WORK, "foreign.h5")
    write_h5py_shard(foreign, 15, 500, "pretrain", 10, sha, 4, 3, False, rng)
    with h5py.File(foreign, "a") as h:
        h.attrs["format"] = "something-else"
    r = gale("inspect", foreign, ok=False)
    check(r.returncode == 1 and "foreign.h5: not a gale shard (format attribute is 'something-else'" in r.stderr,
          f"foreign format refused: {r.returncode} {r.stderr!r}")
    plain = os.path.join(WORK, "plain.h5")
    with h5py.File(plain, "w") as h:
        h.create_dataset("x", data=np.arange(10))
    r = gale("inspect", plain, ok=False)
    check(r.returncode == 1 and "plain.h5: not a gale shard (no 'format' attribute)" in r.stderr,
          f"attribute-less HDF5 refused: {r.returncode} {r.stderr!r}")
    good = os.path.join(WORK, "good.h5")
    write_h5py_shard(good, 15, 500, "pretrain", 300, sha, 4, 3, False, rng)
    blob = open(good, "rb").read()
    for keep in (0, 100, len(blob) // 2, len(blob) - 1):
        cut = os.path.join(WORK, "cut.h5")
        with open(cut, "wb") as f:
            f.write(blob[:keep])
        r = gale("inspect", cut, ok=False)
        r2 = gale("inspect", cut, "--ids", "299", ok=False) if r.returncode == 0 else r
        check(r2.returncode == 1 and "cut.h5" in r2.stderr, f"truncated at {keep} bytes: {r2.returncode} {r2.stderr!r}")


test_gale_to_h5py()
test_h5py_to_gale()
test_refusals()
if failures:
    print(f"{failures} failures")
    sys.exit(1)
print(f"h5py interop: all {checks} checks passed")
