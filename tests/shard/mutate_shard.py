"""Runs damaged copies of a shard through a gale command and counts how each one ended.

Every mutant is the shard with bytes changed: `random N SEED` XORs one random byte of the
first 64 KiB (a small shard's superblock, object headers, attributes, chunk index, global
heap and chunks) in each of N copies; `heap` XORs each byte of the first objects of every
global heap collection ("GCOL"), where HDF5 keeps the variable-length string attributes.
A mutant must end with exit status 0 or 1: a signal or a hang (TIMEOUT seconds) fails.

usage: mutate_shard.py SHARD WORK TIMEOUT random N SEED|heap -- COMMAND... (MUTANT for the file)
"""
import random
import subprocess
import sys

shard, work, timeout, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
sep = sys.argv.index("--")
params, command = sys.argv[5:sep], sys.argv[sep + 1:]
data = open(shard, "rb").read()

metadata_end = min(len(data), 64 * 1024)

mutants = []
if mode == "random":
    n, seed = int(params[0]), int(params[1])
    rng = random.Random(seed)
    for _ in range(n):
        off = rng.randrange(metadata_end)
        mutants.append([(off, rng.randrange(1, 256))])
else:
    at = data.find(b"GCOL")
    while at >= 0:
        for off in range(at, min(at + 16 + 3 * 16, len(data))):
            for x in (0x01, 0x80, 0xFF):
                mutants.append([(off, x)])
        at = data.find(b"GCOL", at + 1)
if not mutants:
    sys.exit(f"FAIL: no mutants of {shard} (mode {mode})")

path = f"{work}/mutant.h5"
ends = {}
failures = []
for changes in mutants:
    b = bytearray(data)
    for off, x in changes:
        b[off] ^= x
    with open(path, "wb") as f:
        f.write(b)
    try:
        rc = subprocess.run([a.replace("MUTANT", path) for a in command], capture_output=True,
                            timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "hang"
    ends[rc] = ends.get(rc, 0) + 1
    if rc not in (0, 1):
        failures.append(f"byte {changes[0][0]} ^ 0x{changes[0][1]:02x}: {rc}")
print(f"{len(mutants)} mutants ({mode}): exit statuses {ends}")
for f in failures[:20]:
    print(f"FAIL: {f}")
sys.exit(1 if failures else 0)
