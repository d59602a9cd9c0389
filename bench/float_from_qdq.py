"""The float network inside an int8 QDQ encoder: weights dequantized into float
initializers, activation QuantizeLinear/DequantizeLinear pairs removed. With its
calib.json (the hash updated) it makes a bundle that tells whether a backend's
disagreement with tract comes from the int8 rounding or from its float arithmetic
(bench/gpu_check.sh). The calibration was fitted on the int8 encoder's embeddings, so
the float bundle's decisions are not the shipped ones: a diagnostic, not a deliverable.

Usage: float_from_qdq.py BUNDLE_DIR OUT_DIR
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def float_graph(model):
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    array = lambda name: numpy_helper.to_array(inits[name])  # noqa: E731
    rename, keep, folded = {}, [], {}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            q = array(n.input[0]).astype(np.float32)
            s = array(n.input[1]).astype(np.float32)
            z = array(n.input[2]).astype(np.float32) if len(n.input) > 2 else np.zeros_like(s)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if s.size > 1:
                shape = [1] * q.ndim
                shape[axis] = -1
                s, z = s.reshape(shape), z.reshape(shape)
            folded[n.output[0]] = numpy_helper.from_array(((q - z) * s).astype(np.float32),
                                                          n.output[0])
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            rename[n.output[0]] = n.input[0]
        else:
            keep.append(n)

    def resolve(name):
        while name in rename:
            name = rename[name]
        return name
    for n in keep:
        for i, name in enumerate(n.input):
            n.input[i] = resolve(name)
    used = {name for n in keep for name in n.input}
    old = list(g.initializer)
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(i for i in old if i.name in used and i.name not in folded)
    g.initializer.extend(v for k, v in folded.items() if k in used)
    if any(resolve(o.name) != o.name for o in g.output):
        raise SystemExit("an output is a QDQ node's: not handled")
    onnx.checker.check_model(model)
    return model


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.split("Usage: ")[1])
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    model = float_graph(onnx.load(str(src / "encoder.onnx")))
    onnx.save(model, str(out / "encoder.onnx"))
    calib = json.loads((src / "calib.json").read_text())
    calib["encoder_sha256"] = hashlib.sha256((out / "encoder.onnx").read_bytes()).hexdigest()
    (out / "calib.json").write_text(json.dumps(calib))
    print(f"{out}: {len(model.graph.node)} nodes, float")


if __name__ == "__main__":
    main()
