"""Shared fixtures: the golden model sparsenet-40-24 (../shared/golden, beside the clone),
compiled once per test session through the package itself."""

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import sparsec

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT.parent / "shared" / "golden"
MODEL = "sparsenet-40-24"
SNET = ROOT / "examples" / "models" / f"{MODEL}.snet"


def read_safetensors(path) -> dict:
    """A safetensors file as name -> float32 array (the format: u64 header length, JSON header,
    raw little-endian data), so the tests need no extra package."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"]).copy()
    return out


def rel_err(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="session")
def golden():
    if not GOLDEN.is_dir():
        raise FileNotFoundError(f"the golden vectors are not at {GOLDEN} (../shared beside the clone)")
    return read_safetensors(GOLDEN / f"{MODEL}.io.safetensors")


@pytest.fixture(scope="session")
def weights():
    return read_safetensors(GOLDEN / f"{MODEL}.safetensors")


@pytest.fixture(scope="session")
def blob():
    """model.bin bytes, compiled from the safetensors path with the default accuracy guard."""
    return sparsec.compile(SNET, weights=GOLDEN / f"{MODEL}.safetensors", max_batch=8)


@pytest.fixture(scope="session")
def model(blob):
    return sparsec.Model.load(blob)
