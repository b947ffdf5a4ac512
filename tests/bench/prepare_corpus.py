#!/usr/bin/env python3
"""Real text for the `gale prepare` benchmarks: English man pages (troff markup stripped)
and Debian fortunes, one document per JSONL line.

  prepare_corpus.py OUT.jsonl [--max-docs N]

Man pages come from /usr/share/man/man[1-8] (.gz), fortunes from /usr/share/games/fortunes
(the English files). Written in a fixed order, so runs are comparable."""
import argparse
import glob
import gzip
import json
import os
import re

ESCAPES = re.compile(r"\\f[BIRPC]|\\f\(..|\\f\[[^\]]*\]|\\\(..|\\\[[^\]]*\]|\\[-&|^ e0c%]|\\s[+-]?\d+|\\\*\(..|\\\*.")


def man_text(path):
    try:
        raw = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
    except (OSError, EOFError):
        return ""
    lines = []
    for line in raw.split("\n"):
        if line.startswith(".so "):
            return ""  # an alias of another page
        if line.startswith((".", "'", "\\{", "\\}")):
            # keep the words of section headings and bold/italic macros
            parts = line.split(None, 1)
            if parts[0] in (".SH", ".SS", ".B", ".I", ".BR", ".IR", ".BI", ".RB", ".IP", ".TP") and len(parts) > 1:
                lines.append(ESCAPES.sub("", parts[1]).replace('"', ""))
            continue
        lines.append(ESCAPES.sub("", line))
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def fortunes():
    skip = {"chinese", "tang300", "song100", "italia"}
    for path in sorted(glob.glob("/usr/share/games/fortunes/*")):
        name = os.path.basename(path)
        if "." in name or name in skip or not os.path.isfile(path):
            continue
        for doc in open(path, encoding="utf-8", errors="replace").read().split("\n%\n"):
            doc = doc.strip().strip("%").strip()
            if doc:
                yield doc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--max-docs", type=int, default=0)
    a = ap.parse_args()
    n = 0
    with open(a.out, "w", encoding="utf-8") as f:
        pages = sorted(glob.glob("/usr/share/man/man[1-8]/*.gz"))
        for text in (t for t in (man_text(p) for p in pages) if len(t) > 200):
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            n += 1
            if a.max_docs and n >= a.max_docs:
                break
        for text in fortunes():
            if a.max_docs and n >= a.max_docs:
                break
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            n += 1
    print(f"{a.out}: {n} documents, {os.path.getsize(a.out) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
