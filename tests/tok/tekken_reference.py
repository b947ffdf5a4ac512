#!/usr/bin/env python3
"""Reference output of mistral-common's Tekkenizer, line for line, for the Tekken tests.

  encode TEKKEN INPUT   ids of each line (split on b"\\n", each decoded as UTF-8 with U+FFFD
                        for ill-formed bytes, as gale reads them), no BOS or EOS
  decode TEKKEN INPUT   text of each line of ids (special tokens left out, the default policy)
  ids TEKKEN OUT N      N random id lines (specials, byte tokens that spell valid and
                        invalid UTF-8, any vocabulary id), seeded, into OUT
  files                 the Tekken files mistral-common ships, one path a line

Exits 77 (ctest's skip) when mistral-common is not installed.
"""
import os
import random
import sys

try:
    import mistral_common
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer
except ImportError:
    print("SKIP: mistral-common (PyPI) is not installed for /usr/bin/python3")
    sys.exit(77)

import logging
logging.disable(logging.WARNING)  # Tekkenizer logs the special tokens it adds


def lines(path):
    data = open(path, "rb").read()
    parts = data.split(b"\n")
    return parts[:-1] if parts and parts[-1] == b"" else parts


def main():
    cmd = sys.argv[1]
    if cmd == "files":
        d = os.path.join(os.path.dirname(mistral_common.__file__), "data")
        for name in sorted(os.listdir(d)):
            if name.startswith("tekken") and name.endswith(".json"):
                print(os.path.join(d, name))
        return
    tek = Tekkenizer.from_file(sys.argv[2])
    out = sys.stdout.buffer
    if cmd == "encode":
        for line in lines(sys.argv[3]):
            ids = tek.encode(line.decode("utf-8", "replace"), bos=False, eos=False)
            out.write((" ".join(map(str, ids)) + "\n").encode())
    elif cmd == "decode":
        for line in lines(sys.argv[3]):
            ids = [int(x) for x in line.split()]
            out.write(tek.decode(ids).encode("utf-8", "surrogatepass") + b"\n")
    elif cmd == "ids":
        rng = random.Random(20240911)
        n_special, n = tek.num_special_tokens, tek.n_words
        with open(sys.argv[3], "w") as f:
            for _ in range(int(sys.argv[4])):
                ids = []
                for _ in range(rng.randint(0, 12)):
                    kind = rng.randrange(4)
                    if kind == 0:
                        ids.append(rng.randrange(n_special))
                    elif kind == 1:
                        ids.extend(n_special + rng.randrange(256) for _ in range(rng.randint(1, 4)))
                    else:
                        ids.append(rng.randrange(n_special, n))
                f.write(" ".join(map(str, ids)) + "\n")


if __name__ == "__main__":
    main()
