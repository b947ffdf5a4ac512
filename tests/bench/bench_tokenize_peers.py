#!/usr/bin/env python3
"""The Python peers of tests/bench/bench_tokenize.sh, run in its venv: sentencepiece 0.2.3
(`SentencePieceProcessor.encode(lines, num_threads=1)`) and tiktoken
(`Encoding.encode_ordinary_batch(lines, num_threads=1)` over the Tekken file's vocabulary and
pattern, ids offset by its special tokens as mistral-common's Tekkenizer does). Only the
encode call is timed (CPU seconds of this process, the least of REPS runs); the ids are
written one line per input line, as spm_encode and gale print them.

usage: bench_tokenize_peers.py sentencepiece MODEL CORPUS OUT REPS
       bench_tokenize_peers.py tiktoken TEKKEN CORPUS OUT REPS      prints "cpu_seconds"
"""
import base64
import json
import sys
import time


def best_cpu(fn, reps):
    best, result = float("inf"), None
    for _ in range(reps):
        t0 = time.process_time()
        result = fn()
        best = min(best, time.process_time() - t0)
    return best, result


def main():
    peer, model, corpus, out, reps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    lines = open(corpus, encoding="utf-8", newline="").read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if peer == "sentencepiece":
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=model)
        cpu, ids = best_cpu(lambda: sp.encode(lines, out_type=int, num_threads=1), reps)
        offset = 0
    else:
        import tiktoken
        d = json.load(open(model, encoding="utf-8"))
        cfg = d["config"]
        offset = cfg["default_num_special_tokens"]
        n = cfg["default_vocab_size"] - offset
        ranks = {base64.b64decode(v["token_bytes"]): v["rank"] for v in d["vocab"][:n]}
        enc = tiktoken.Encoding(name="tekken", pat_str=cfg["pattern"], mergeable_ranks=ranks, special_tokens={})
        cpu, ids = best_cpu(lambda: enc.encode_ordinary_batch(lines, num_threads=1), reps)
    with open(out, "w") as f:
        for row in ids:
            f.write(" ".join(str(i + offset) for i in row) + "\n")
    print(f"{cpu:.4f}")


if __name__ == "__main__":
    main()
