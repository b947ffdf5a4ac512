#!/usr/bin/env python3
"""Writes the tokenizer test corpora, deterministically (fixed seed), into OUT:

  real.txt    a bounded sample of real multilingual text from Debian packages: fortunes
              (English, de, es, it, pl, ru, chinese) and man pages (ja, de, ru, pl, zh_CN, es, it;
              gzipped roff, decompressed)
  stress.txt  generated lines aimed at the corners of sentencepiece's normaliser and BPE:
              runs of spaces, \\r \\v \\f, control bytes, NUL, emoji and ZWJ sequences, combining
              marks, mixed scripts, literal U+2581 and U+FFFD, every kind of invalid UTF-8, long
              lines, long runs of one character, digits, strings that look like control or
              user-defined pieces, random byte lines, and random concatenations of vocabulary
              pieces (to exercise merge order and score ties)
  spans.txt   generated lines of recurring spans (a run of spaces and the bytes up to the next
              space), what an encoder caching words or whole spans must get right: the same spans
              at line starts and inside lines, runs of spaces inside, leading and trailing, lines
              of spaces only, spans beside a literal U+2581, <unk> spans in a row, byte-fallback
              characters, user-defined and control pieces, invalid UTF-8, spans of 40 to 63
              bytes (around what a 64-byte cache entry holds)
  ids.txt     random lines of token ids for decoding (byte pieces in runs, control ids, <unk>,
              leading U+2581 pieces), for the decode comparison
  remove-extra.model   mistral-v1.model with normalizer_spec.remove_extra_whitespaces = true,
              to check gale honours that flag as sentencepiece does
  unused.model, no-byte-fallback.model, user-defined.model, user-defined-no-space.model
              other variants (see variant_models)

usage: gen_tokenizer_corpus.py --shared DIR --out DIR
"""
import argparse
import glob
import gzip
import os
import random
import struct

SEED = 20240611


# ---- a minimal protobuf reader/writer, enough for ModelProto's top level ----

def varint(b, i):
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def fields(b):
    i = 0
    while i < len(b):
        start = i
        k, i = varint(b, i)
        f, w = k >> 3, k & 7
        if w == 0:
            v, i = varint(b, i)
        elif w == 2:
            n, i = varint(b, i)
            v = b[i:i + n]
            i += n
        elif w == 5:
            v = b[i:i + 4]
            i += 4
        elif w == 1:
            v = b[i:i + 8]
            i += 8
        else:
            raise ValueError("wire type %d" % w)
        yield f, w, v, b[start:i]


def enc_varint(x):
    out = bytearray()
    while True:
        c = x & 0x7F
        x >>= 7
        out.append(c | (0x80 if x else 0))
        if not x:
            return bytes(out)


def model_pieces(path):
    pieces = []
    for f, w, v, _ in fields(open(path, "rb").read()):
        if f == 1:
            p = {ff: vv for ff, _, vv, _ in fields(v)}
            pieces.append((p.get(1, b""), p.get(3, 1)))
    return pieces


def enc_field(number, value):
    if isinstance(value, int):
        return enc_varint(number << 3) + enc_varint(value)
    return enc_varint(number << 3 | 2) + enc_varint(len(value)) + value


def rewrite_model(path, piece_fn=None, trainer_set=None, score_fn=None):
    """The model bytes with each piece (index, bytes, type) replaced by piece_fn's (bytes, type),
    each score by score_fn(index, score)'s, and the varint fields of trainer_set {number: value}
    replaced in trainer_spec."""
    out = bytearray()
    index = 0
    for f, w, v, raw in fields(open(path, "rb").read()):
        if f == 1 and (piece_fn or score_fn):
            p = {ff: (vv, rr) for ff, _, vv, rr in fields(v)}
            piece, ptype = (piece_fn or (lambda i, p, t: (p, t)))(index, p[1][0], p[3][0] if 3 in p else 1)
            score = p[2][1] if 2 in p else b""
            if score_fn:
                old = struct.unpack("<f", p[2][0])[0] if 2 in p else 0.0
                score = enc_varint(2 << 3 | 5) + struct.pack("<f", score_fn(index, old))
            body = enc_field(1, piece) + score + enc_field(3, ptype)
            out += enc_field(1, body)
            index += 1
        elif f == 2 and trainer_set:
            body = b"".join(rr for ff, _, _, rr in fields(v) if ff not in trainer_set)
            body += b"".join(enc_field(k, val) for k, val in sorted(trainer_set.items()))
            out += enc_field(2, body)
        else:
            out += raw
    return bytes(out)


# strings the user-defined variant adds as pieces; the stress text uses them too
USER_DEFINED_EXTRA = ["Q Q", "x\u2581y", "<tag>", "\t\t", "\u2581\u2581", "Zz"]


def variant_models(path, rng):
    """Variants of mistral-v1.model that reach the rarer paths of sentencepiece's encoder:
    UNUSED pieces (split back into their pair), no byte fallback (<unk>), and user-defined pieces
    holding spaces and U+2581 (so words cannot be encoded one at a time)."""
    pieces = model_pieces(path)
    existing = {p for p, _ in pieces}
    unused = set(i for i in rng.sample(range(259, 6000), 900) if pieces[i][1] == 1)
    yield "unused.model", rewrite_model(path, lambda i, p, t: (p, 5 if i in unused else t))
    yield "no-byte-fallback.model", rewrite_model(path, lambda i, p, t: (p, 3 if t == 6 else t), {35: 0})
    extra = [e.encode() for e in USER_DEFINED_EXTRA if e.encode() not in existing]
    slots = {31990 - k: e for k, e in enumerate(extra)}
    userdef = {i for i, (p, t) in enumerate(pieces) if p in ("\u2581the".encode(), b"ing", b"[")}

    def make_user_defined(i, p, t):
        if i in slots:
            return slots[i], 4
        return p, 4 if i in userdef else t
    yield "user-defined.model", rewrite_model(path, make_user_defined)
    # user-defined pieces without spaces, which leave spans independent: the span cache beside them
    ud_spans = {i for i, (p, t) in enumerate(pieces) if p in ("\u2581the".encode(), b"ing", b"[", b"Zz", b"<")}
    yield "user-defined-no-space.model", rewrite_model(path, lambda i, p, t: (p, 4 if i in ud_spans else t))
    yield "ties.model", rewrite_model(path, score_fn=tied_score)
    # and with the UNUSED pieces, which make sentencepiece merge over whole lines: the ties of
    # long runs of symbols (the heap merge)
    yield "ties-unused.model", rewrite_model(path, lambda i, p, t: (p, 5 if i in unused else t), score_fn=tied_score)


def tied_score(i, score):
    """Scores with many ties, for the tie-breaks of the merge order: the best 300 pieces all
    0.0 or -0.0 (equal, as sentencepiece compares them), the others in groups of 64."""
    if score > -302:
        return -0.0 if i % 2 else 0.0
    return float(int(score) // 64 * 64)


def with_remove_extra_whitespaces(path):
    """The model bytes with normalizer_spec.remove_extra_whitespaces set to true."""
    out = bytearray()
    for f, w, v, raw in fields(open(path, "rb").read()):
        if f == 3:
            spec = bytearray()
            for ff, ww, vv, rr in fields(v):
                if ff != 4:
                    spec += rr
            spec += enc_varint(4 << 3) + enc_varint(1)
            out += enc_varint(3 << 3 | 2) + enc_varint(len(spec)) + spec
        else:
            out += raw
    return bytes(out)


# ---- real text ----

def sample_lines(data, rng, budget):
    lines = [l for l in data.split(b"\n") if l.strip()]
    rng.shuffle(lines)
    out, size = [], 0
    for l in lines:
        if size >= budget:
            break
        out.append(l)
        size += len(l) + 1
    return out


def fortune_text(paths):
    data = b""
    for p in sorted(paths):
        if p.endswith((".dat", ".u8")) or not os.path.isfile(p) or os.path.islink(p):
            continue
        data += open(p, "rb").read()
    return data


def man_text(lang, rng, max_files=40):
    files = sorted(glob.glob("/usr/share/man/%s/man*/*.gz" % lang))
    rng.shuffle(files)
    data = b""
    for p in files[:max_files]:
        try:
            data += gzip.open(p).read()[:20000]
        except OSError:
            continue
    return data


def real_corpus(rng):
    out = []
    fort = "/usr/share/games/fortunes"
    out += sample_lines(fortune_text(glob.glob(fort + "/*")), rng, 100000)
    for lang in ["de", "es", "it", "pl", "ru"]:
        out += sample_lines(fortune_text(glob.glob("%s/%s/*" % (fort, lang))), rng, 25000)
    out += sample_lines(fortune_text([fort + "/chinese"]), rng, 30000)
    for lang in ["ja", "de", "ru", "pl", "zh_CN", "es", "it"]:
        out += sample_lines(man_text(lang, rng), rng, 20000)
    return out


# ---- stress text ----

INVALID = [
    b"\x80", b"\xbf", b"\x80\x80\x80", b"\xc2", b"\xe2\x96", b"\xf0\x9f\x98", b"\xf0\x9f",
    b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf",
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xed\xb2\x80", b"\xf4\x90\x80\x80", b"\xf7\xbf\xbf\xbf",
    b"\xf5", b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80", b"\xfe", b"\xff", b"\xfe\xff",
    b"\xef\xbb\xbf", b"\xc3\x28", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc", b"\xe2\x82\x28",
]

SNIPPETS = [
    "Hello, world!", "the quick brown fox", "naïve café", "Ünïcödé", "日本語のテキスト", "中文文本测试",
    "Привет, мир", "Καλημέρα", "שלום עולם", "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีครับ", "안녕하세요",
    "👨\u200d👩\u200d👧\u200d👦", "👍🏽", "🇫🇷🇩🇪", "🏳️\u200d🌈", "e\u0301", "a\u0308\u0323", "Z\u0351\u0352\u0353",
    "\U00020000\U0002a6d6", "\u2581", "\u2581\u2581", "\ufffd", "\u00a0", "\u3000", "\u200b", "\ufeff",
    "[INST]", "[/INST]", "<s>", "</s>", "<unk>", "<0x41>", "<pad>", "[TOOL_CALLS]", "[REFERENCE_DOC_3]",
    "[REFERENCE_DOC_12]x", "[REFERENCE_DOC_", "[control_12]", "x[REFERENCE_DOC_0][REFERENCE_DOC_1]",
    "3.14159", "1234567890", "2024-06-11T12:00:00Z", "$1,000,000", "0x7FFF", "i++;", "a->b", "http://x.org/?q=1",
    "\t", "\r", "\x0b", "\x0c", "\x00", "Q Q", "Q  Q", "x\u2581y", "x y", "<tag>", "\t\t\t", "Zz", "ZzZ", "\x01", "\x1b[31m", "\x7f", "\x85", "\u2028", "\u2029",
]


def random_unicode(rng, n):
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
              (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2500, 0x25FF), (0x3040, 0x30FF),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xE0FF), (0xFE00, 0xFFFD), (0x1F300, 0x1FAFF),
              (0x10000, 0x1007F), (0xE0000, 0xE007F), (0x10FF00, 0x10FFFF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def stress_corpus(rng, pieces):
    normal = [p for p, t in pieces if t == 1]
    user = [p for p, t in pieces if t in (3, 4)]
    lines = []
    # spaces at the start, middle and end, alone and in runs
    for n in range(0, 18):
        lines.append(b" " * n)
        lines.append(b" " * n + b"word")
        lines.append(b"word" + b" " * n)
        lines.append(b"a" + b" " * n + b"b" + b" " * (n // 2) + b"c")
        lines.append(b" " * n + "\u2581".encode() * (n % 4) + b" x " + b" " * n)
    lines += [b"", b"\t\tindented", b"tab\there", b"cr\r", b"\rcr", b"vt\x0bff\x0c", b"nul\x00byte", b"\x00",
              b"\x00\x00 \x00", b"  \t \r \x0b \x0c  ", "\u2581 \u2581  \u2581".encode()]
    # every invalid sequence alone, between letters, after spaces, and inside words
    for bad in INVALID:
        lines += [bad, b"a" + bad + b"b", b" " + bad + b" ", bad * 3, b"word" + bad, bad + b"word",
                  "日本".encode() + bad + "語".encode(), b"\xe2\x96" + bad, bad + b"\x81"]
    # snippets mixed at random, with random separators
    seps = [b"", b" ", b"  ", b"\t", b"\r", " \u2581".encode()]
    for _ in range(1500):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.45:
                parts.append(rng.choice(SNIPPETS).encode())
            elif r < 0.65:
                parts.append(random_unicode(rng, rng.randint(1, 8)).encode("utf-8", "surrogatepass"))
            elif r < 0.75:
                parts.append(rng.choice(INVALID))
            elif r < 0.9:
                parts.append(rng.choice(normal).replace("\u2581".encode(), b" "))
            else:
                parts.append(rng.choice(user))
            parts.append(rng.choice(seps))
        lines.append(b"".join(parts))
    # concatenations of vocabulary pieces: merge order and ties
    for _ in range(2500):
        k = rng.randint(2, 10)
        lines.append(b"".join(rng.choice(normal) for _ in range(k)).replace("\u2581".encode(), b" "))
        lines.append(b"".join(rng.choice(normal) for _ in range(k)))
    # long runs of one character and long lines
    for ch in ["a", " ", "\u2581", "1", "0", "9", ".", "-", "=", "日", "😀", "é", "\t", "ab", "\x00", "\xff"]:
        for n in [7, 64, 513, 4099]:
            lines.append((ch * n).encode("latin-1" if ch in ("\xff",) else "utf-8"))
    lines.append(" ".join(rng.choice(SNIPPETS) for _ in range(8000)).encode())
    lines.append("".join(random_unicode(rng, 3) for _ in range(4000)).encode())
    lines.append(b"".join(rng.choice(normal) for _ in range(6000)))
    # digits
    for _ in range(300):
        lines.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 30))) for _ in range(rng.randint(1, 6))).encode())
    # random bytes
    for _ in range(400):
        lines.append(bytes(rng.choice([rng.randint(0, 255), rng.randint(0x80, 0xFF), 0x20, 0xE2])
                           for _ in range(rng.randint(1, 80))).replace(b"\n", b" "))
    # a binary file from the same packages, cut into lines
    dat = open("/usr/share/games/fortunes/fortunes.dat", "rb").read()[:20000] if os.path.exists(
        "/usr/share/games/fortunes/fortunes.dat") else b""
    lines += dat.split(b"\n")
    # long words of pieces (more symbols than the merge's scan takes; the scan and the heap
    # must merge in the same order), from a generator of their own so that the lines above and
    # the variant models stay as they were
    inner = [p for p in normal if not p.startswith("\u2581".encode())]
    words = random.Random(SEED + 1)
    for _ in range(400):
        lines.append(b" ".join(b"".join(words.choice(inner) for _ in range(words.randint(8, 40)))
                               for _ in range(words.randint(1, 4))))
    return [l.replace(b"\n", b" ") for l in lines]


def span_corpus(rng):
    """Lines of spans: words that recur at the starts of lines and inside them, between runs of
    spaces, so that an encoder's caches both miss and hit on each kind."""
    words = ["the", "word", "слово", "Привет,", "日本語", "中文", "😀", "😀😀", "👍🏽", "e\u0301", "naïve",
             "\u2581", "x\u2581", "\u2581x", "\u2581\u2581", "\ufffd", "\t", "\t\t", "tab\there", "\x00",
             "[INST]", "[/INST]", "<s>", "</s>", "<unk>", "<0x41>", "[REFERENCE_DOC_1]", "[REFERENCE_DOC_1]x",
             "x[REFERENCE_DOC_2]", "<tag>", "Zz", "ZzZ", "ing", "thing", "[", "[[", "<", "3.14", "1234567890",
             "\U00020000", "\U0010ffff", "\ue000", "\u0fff", "ℵ", "\u3000", "\u00a0"]
    words = [w.encode() for w in words] + [b"\x80", b"\xe2\x96", b"a\xff", b"\xc3", b"\xf0\x9f\x98"]
    # around the length a 64-byte cache entry keeps with the ids, and over it
    long_words = []
    for k in range(40, 64):
        long_words += [b"a" * k, b"ab" * (k // 2), "я".encode() * (k // 2), "日".encode() * (k // 3), b"\xff" * k]
    lines = [b" " * k for k in range(1, 6)]
    for _ in range(3000):
        parts = [b" " * rng.choice([0, 0, 0, 1, 2, 3])]
        for _ in range(rng.randint(1, 8)):
            parts.append(rng.choice(words if rng.random() < 0.85 else long_words))
            parts.append(b" " * rng.choice([1, 1, 1, 2, 3]))
        parts[-1] = b" " * rng.choice([0, 0, 0, 1, 2])
        lines.append(b"".join(parts))
    # a word alone on its line, then inside lines: one key at the start and after a space
    for w in words + long_words:
        lines += [w, b" " + w, b"x " + w + b" x", b"x  " + w, w + b" " + w + b"  " + w, b"  " + w + b" "]
    return lines


def id_lines(rng, pieces):
    n = len(pieces)
    by_type = {}
    for i, (_, t) in enumerate(pieces):
        by_type.setdefault(t, []).append(i)
    ws_ids = [i for i, (p, t) in enumerate(pieces) if t == 1 and p.startswith("\u2581".encode())]
    lines = []
    for _ in range(3000):
        ids = []
        for _ in range(rng.randint(0, 25)):
            r = rng.random()
            if r < 0.35:
                ids += rng.sample(by_type[6], rng.randint(1, 4))  # byte pieces, valid or not as UTF-8
            elif r < 0.45:
                ids.append(rng.choice(by_type[3]))
            elif r < 0.5:
                ids.append(by_type[2][0])
            elif r < 0.7:
                ids.append(rng.choice(ws_ids))
            else:
                ids.append(rng.randrange(n))
        lines.append(" ".join(map(str, ids)))
    # UTF-8 spelled out in byte pieces, with a leading-space piece before or after
    for ch in ["é", "日", "😀", "\u2581"]:
        b = ["<0x%02X>" % c for c in ch.encode()]
        bid = [by_type[6][0] + int(x[3:5], 16) for x in b]
        lines.append(" ".join(map(str, bid + [ws_ids[0]] + bid)))
        lines.append(" ".join(map(str, [ws_ids[0]] + bid)))
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = random.Random(SEED)
    v3 = model_pieces(os.path.join(a.shared, "tokenizers", "mistral-v3.model"))
    with open(os.path.join(a.out, "real.txt"), "wb") as f:
        f.write(b"\n".join(real_corpus(rng)) + b"\n")
    with open(os.path.join(a.out, "stress.txt"), "wb") as f:
        f.write(b"\n".join(stress_corpus(rng, v3)) + b"\n")
    with open(os.path.join(a.out, "spans.txt"), "wb") as f:
        f.write(b"\n".join(span_corpus(random.Random(SEED + 1))) + b"\n")
    with open(os.path.join(a.out, "ids.txt"), "w") as f:
        f.write("\n".join(id_lines(rng, v3)) + "\n")
    with open(os.path.join(a.out, "remove-extra.model"), "wb") as f:
        f.write(with_remove_extra_whitespaces(os.path.join(a.shared, "tokenizers", "mistral-v1.model")))
    for name, data in variant_models(os.path.join(a.shared, "tokenizers", "mistral-v1.model"), rng):
        with open(os.path.join(a.out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
