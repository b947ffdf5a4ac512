"""The tensors of a checkpoint folder by stem ("model", "optimizer", "master"): STEM.safetensors,
or STEM.safetensors.index.json and the shards it names, as gale writes them (each rank its own
files). For the train tests; numpy only. Run as a script: checkpoint_files.py same A B STEM...
fails unless folders A and B hold bit-identical tensors under each stem."""
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "F16": np.float16}


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return {k: v for k, v in json.loads(f.read(n)).items() if k != "__metadata__"}, 8 + n


def files(folder, stem):
    """The stem's files, from its index when there is one."""
    index = os.path.join(folder, stem + ".safetensors.index.json")
    if os.path.exists(index):
        return sorted(set(json.load(open(index))["weight_map"].values()))
    return [stem + ".safetensors"]


def tensors(folder, stem):
    """{name: array} (BF16 widened to float32), each name once across the files."""
    out = {}
    for name in files(folder, stem):
        path = os.path.join(folder, name)
        head, start = header(path)
        data = open(path, "rb").read()[start:]
        for key, t in head.items():
            assert key not in out, f"{key} is in two files of {folder}/{stem}"
            a, b = t["data_offsets"]
            if t["dtype"] == "BF16":
                raw = np.frombuffer(data[a:b], dtype=np.uint16).astype(np.uint32) << 16
                out[key] = raw.view(np.float32).reshape(t["shape"])
            else:
                out[key] = np.frombuffer(data[a:b], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
    return out


def same(a, b, stems):
    for stem in stems:
        x, y = tensors(a, stem), tensors(b, stem)
        assert x.keys() == y.keys(), f"FAIL: {a} and {b} hold other {stem} tensors"
        for k in x:
            assert np.array_equal(x[k], y[k]), f"FAIL: {stem} tensor {k} differs between {a} and {b}"


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[1] != "same":
        sys.exit("usage: checkpoint_files.py same FOLDER_A FOLDER_B STEM...")
    same(sys.argv[2], sys.argv[3], sys.argv[4:])
