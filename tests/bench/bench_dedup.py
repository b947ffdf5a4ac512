#!/usr/bin/env python3
"""Near-duplicate detection of `gale prepare` against datasketch's MinHashLSH.

A corpus of real documents (man pages, fortunes: prepare_corpus.py) is cleaned of its own
near duplicates (datasketch LSH at threshold 0.5, confirmed by true Jaccard >= 0.5), then
gets planted copies appended after it: exact ones (upper case, doubled spaces), near ones
(0.2 to 4% of the words substituted, deleted or inserted) and far ones (40% edited). Ground
truth is the true Jaccard of 5-word shingle sets. Both systems see the same JSONL file with
the same normalisation, shingles, 14 bands x 8 rows and threshold 0.8, and both keep the
first document of each group:

  gale:       gale prepare --removed (exact hash, then MinHash LSH confirmed by true Jaccard)
  datasketch: MinHash.bulk(num_perm=112) + MinHashLSH(params=(14, 8)), query then insert

Reported per system: precision of the removed set (a removed copy is right when some other
document of its family has true Jaccard >= 0.8 with it; exact copies count as right),
recall on planted near copies with Jaccard >= 0.85 to their original, recall on exact
copies, and time (gale: its read+dedup phase from report.json, one thread and all cores;
datasketch: shingling + MinHash + LSH, one thread).
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
import unicodedata

from datasketch import MinHash, MinHashLSH

WS = re.compile(r"\s+")


def normalize_near(text):
    """The near form of data/normalize.h: lower case, accents stripped, digits to 0,
    punctuation and symbols dropped, white space folded."""
    out = []
    for ch in unicodedata.normalize("NFKD", text.lower()):
        cat = unicodedata.category(ch)
        if cat == "Mn" or cat[0] in "PS":
            continue
        out.append("0" if "0" <= ch <= "9" else ch)
    return WS.sub(" ", "".join(out)).strip()


def shingles(text, k=5):
    words = normalize_near(text).split(" ")
    words = [w for w in words if w]
    if not words:
        return set()
    if len(words) < k:
        return {" ".join(words)}
    return {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}


def jaccard(a, b):
    return len(a & b) / len(a | b) if a and b else 0.0


def edit_words(text, rate, rng):
    words = text.split()
    n_edits = max(1, int(len(words) * rate))
    for _ in range(n_edits):
        if len(words) < 3:
            break
        at = rng.randrange(len(words))
        op = rng.randrange(3)
        new = f"zq{rng.randrange(100000)}"
        if op == 0:
            words[at] = new
        elif op == 1:
            del words[at]
        else:
            words.insert(at, new)
    return " ".join(words)


def exact_variant(text):
    return "  " + text.upper().replace(" ", " \t")


def build_corpus(a, rng):
    docs = [json.loads(line)["text"] for line in open(a.corpus, encoding="utf-8")]
    stride = max(1, len(docs) // a.base_docs)
    docs = [d for d in docs[::stride] if len(d.split()) >= 20][: a.base_docs]
    # clean natural near duplicates: only planted ones remain
    lsh = MinHashLSH(threshold=0.5, num_perm=128)
    sets, base = [], []
    for d in docs:
        s = shingles(d)
        if not s:
            continue
        m = MinHash(num_perm=128, seed=7)
        m.update_batch([x.encode() for x in s])
        if any(jaccard(s, sets[i]) >= 0.5 for i in lsh.query(m)):
            continue
        lsh.insert(len(base), m)
        sets.append(s)
        base.append(d)
    n = len(base)
    copies = []  # (text, source, kind)
    for _ in range(int(n * a.exact_share)):
        src = rng.randrange(n)
        copies.append((exact_variant(base[src]), src, "exact"))
    for _ in range(int(n * a.near_share)):
        src = rng.randrange(n)
        copies.append((edit_words(base[src], rng.uniform(0.002, 0.04), rng), src, "near"))
    for _ in range(int(n * a.far_share)):
        src = rng.randrange(n)
        copies.append((edit_words(base[src], 0.4, rng), src, "far"))
    rng.shuffle(copies)
    family = {}
    for i, (_, src, _) in enumerate(copies):
        family.setdefault(src, []).append(n + i)
    texts = base + [c[0] for c in copies]
    csets = {n + i: shingles(c[0]) for i, c in enumerate(copies)}
    truth = {}
    for i, (text, src, kind) in enumerate(copies):
        idx = n + i
        j_src = jaccard(csets[idx], sets[src])
        best = max([j_src] + [jaccard(csets[idx], csets[o]) for o in family[src] if o != idx])
        truth[idx] = {"kind": kind, "source": src, "j": j_src, "best": best}
    return texts, n, truth


def score(removed, truth, threshold):
    right = sum(1 for i in removed if i in truth and (truth[i]["kind"] == "exact" or truth[i]["best"] >= threshold))
    near = [i for i, t in truth.items() if t["kind"] != "exact" and t["j"] >= 0.85]
    exact = [i for i, t in truth.items() if t["kind"] == "exact"]
    return {
        "removed": len(removed),
        "precision": right / len(removed) if removed else 0.0,
        "recall_near_j085": sum(1 for i in near if i in removed) / max(1, len(near)),
        "near_pairs_j085": len(near),
        "recall_exact": sum(1 for i in exact if i in removed) / max(1, len(exact)),
    }


def run_gale(a, path, threads, out):
    removed_path = os.path.join(a.work, f"removed-{threads}.jsonl")
    cmd = [a.gale, "prepare", "--input", path, "--tokenizer", a.tokenizer, "--out", out, "--overwrite",
           "--dedup", "exact,near", "--near-threshold", str(a.threshold), "--removed", removed_path,
           "--threads", str(threads), "--progress", "off", "--seq-len", "2048"]
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    report = json.load(open(os.path.join(out, "report.json")))
    removed = set()
    for line in open(removed_path):
        r = json.loads(line)
        if r["reason"] in ("exact", "near"):
            removed.add(r["line"] - 1)
    return removed, report["seconds"]["read_dedup"], report["cpu_seconds"]["read_dedup"]


def run_datasketch(texts, threshold):
    t0, c0 = time.perf_counter(), time.process_time()
    sets = [shingles(t) for t in texts]
    c1 = time.process_time()
    hashes = MinHash.bulk([[s.encode() for s in x] for x in sets], num_perm=112, seed=1)
    lsh = MinHashLSH(threshold=threshold, num_perm=112, params=(14, 8))
    removed = set()
    for i, m in enumerate(hashes):
        if lsh.query(m):
            removed.add(i)
        else:
            lsh.insert(i, m)
    return removed, time.perf_counter() - t0, time.process_time() - c0, time.process_time() - c1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gale", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--corpus", required=True, help="JSONL of real documents (prepare_corpus.py)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--base-docs", type=int, default=10000)
    ap.add_argument("--exact-share", type=float, default=0.05)
    ap.add_argument("--near-share", type=float, default=0.15)
    ap.add_argument("--far-share", type=float, default=0.05)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    rng = random.Random(1)
    t = time.perf_counter()
    texts, n_base, truth = build_corpus(a, rng)
    path = os.path.join(a.work, "dedup-bench.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    mb = os.path.getsize(path) / 1e6
    print(f"corpus: {n_base} originals + {len(truth)} planted copies, {mb:.1f} MB (built in {time.perf_counter() - t:.0f}s)")

    results = {"corpus": {"originals": n_base, "copies": len(truth), "mb": mb}}
    for threads in (1, os.cpu_count() or 1):
        removed, secs, cpu = run_gale(a, path, threads, os.path.join(a.work, f"gale-out-{threads}"))
        results[f"gale_{threads}t"] = dict(score(removed, truth, a.threshold), seconds=secs, cpu_seconds=cpu,
                                           mb_per_cpu_s=mb / cpu)
    removed, secs, cpu, cpu_minhash = run_datasketch(texts, a.threshold)
    results["datasketch"] = dict(score(removed, truth, a.threshold), seconds=secs, cpu_seconds=cpu,
                                 cpu_seconds_minhash_lsh=cpu_minhash, mb_per_cpu_s=mb / cpu)
    g1 = results["gale_1t"]
    results["speedup_1t"] = results["datasketch"]["cpu_seconds"] / g1["cpu_seconds"]
    results["speedup_1t_vs_minhash_lsh_only"] = results["datasketch"]["cpu_seconds_minhash_lsh"] / g1["cpu_seconds"]
    for name in [k for k in results if k.startswith(("gale_", "datasketch"))]:
        r = results[name]
        print(f"{name:12s} removed {r['removed']:6d}  precision {r['precision']:.4f}  recall(J>=0.85) "
              f"{r['recall_near_j085']:.4f} of {r['near_pairs_j085']}  recall(exact) {r['recall_exact']:.4f}  "
              f"wall {r['seconds']:.2f}s  cpu {r['cpu_seconds']:.2f}s  {r['mb_per_cpu_s']:.1f} MB per cpu-second")
    print(f"gale (1 thread) is {results['speedup_1t']:.1f}x datasketch's speed in CPU time "
          f"({results['speedup_1t_vs_minhash_lsh_only']:.1f}x its MinHash+LSH alone, shingling excluded)")
    if a.json:
        json.dump(results, open(a.json, "w"), indent=2)
    ok = g1["precision"] >= 0.99 and g1["recall_near_j085"] >= 0.95 and results["speedup_1t"] >= 10
    print("targets (precision >= 0.99, recall >= 0.95, >= 10x datasketch):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
