#!/usr/bin/env python3
"""Compares two outputs line by line (sentencepiece's and gale's) and, on a mismatch, prints the
first few differing lines with the input line and both sequences. Exit status 1 on mismatch.

usage: compare_lines.py LABEL INPUT EXPECTED ACTUAL
"""
import sys

SHOW = 5


def main():
    label, inp, exp, act = sys.argv[1:5]
    inputs = open(inp, "rb").read().split(b"\n")
    expected = open(exp, "rb").read().split(b"\n")
    actual = open(act, "rb").read().split(b"\n")
    bad = [i for i in range(max(len(expected), len(actual)))
           if i >= len(expected) or i >= len(actual) or expected[i] != actual[i]]
    if not bad:
        print("%s: %d lines, all identical" % (label, len(expected) - 1))
        return 0
    print("%s: %d of %d lines differ (expected %d lines, got %d)" % (label, len(bad), len(expected) - 1,
                                                                     len(expected) - 1, len(actual) - 1))
    for i in bad[:SHOW]:
        text = inputs[i] if i < len(inputs) else b"<no input line>"
        print("  line %d, input %r" % (i + 1, text[:300]))
        print("    sentencepiece: %s" % (expected[i][:600].decode("utf-8", "replace") if i < len(expected) else "<missing>"))
        print("    gale:          %s" % (actual[i][:600].decode("utf-8", "replace") if i < len(actual) else "<missing>"))
    return 1


if __name__ == "__main__":
    sys.exit(main())
