"""A run's linear classifier (`head.0` in its model.safetensors), read without torch or the
safetensors package, for the scripts that score the classifier's own outputs."""
import json
import struct

import numpy as np


def head_tensors(path):
    """The float32 `head.*` tensors of a safetensors file, by name."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, meta in header.items():
        if name.startswith("head.") and meta["dtype"] == "F32":
            a, z = meta["data_offsets"]
            out[name] = np.frombuffer(raw[8 + n + a : 8 + n + z], dtype="<f4").reshape(meta["shape"])
    return out


def classifier(run):
    """(W, b) of a cross-entropy run's classifier, float64, or None for a run without one
    (SupCon and SimCLR train a projection head, a frozen import none)."""
    config = json.loads((run / "config.json").read_text())
    if config.get("loss") != "ce" or config.get("model", {}).get("head", {}).get("kind") != "classifier":
        return None
    t = head_tensors(run / "model.safetensors")
    if "head.0.weight" not in t:
        return None
    return t["head.0.weight"].astype(np.float64), t["head.0.bias"].astype(np.float64)
