"""Helpers of the pytest suite: the pdenet binary, and safetensors files in plain numpy (the CI
environment has numpy, maturin and pytest only)."""
import json
import os
import pathlib
import struct
import subprocess

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        code = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[a.dtype]
        raw = a.tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path):
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    body = data[8 + n :]
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=_DTYPES[h["dtype"]]).reshape(h["shape"])
    return out


def pdenet_binary():
    """The CLI: $PDENET_BIN, or the release build of this repository."""
    path = os.environ.get("PDENET_BIN") or str(REPO / "target" / "release" / "pdenet")
    if not os.path.exists(path):
        pytest.fail(f"no pdenet binary at {path}: run `cargo build --release` first (or set PDENET_BIN)")
    return path


def cli(*args):
    r = subprocess.run([pdenet_binary(), *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"pdenet {' '.join(map(str, args))} failed: {r.stderr.strip()}")
    return r


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))
