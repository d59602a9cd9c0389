"""Reduced models for tract's depthwise-convolution gap (an upstream-ready report).

Usage: depthwise_probe.py OUT_DIR [RUNS]

Writes four float ONNX encoders with oodmon's encoder interface ([1, 3, H, W] -> [1, C]),
the shapes of EfficientNet-Lite0's depthwise layers at oodmon's 64x64 input:

- `pw-C-S.onnx`: a 1x1 convolution 3 -> C at SxS, then global average pooling;
- `dw-C-S.onnx`: the same with a 3x3 depthwise convolution (group = C, pad 1) after it.

The depthwise layer's cost is the difference between the two. Each file is timed here
with onnxruntime (one thread, all optimisations); time the same files in tract with
`oodmon-edge bench --model FILE`. Random weights, seeded.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SHAPES = [(16, 32), (96, 32), (144, 16), (240, 8), (480, 4), (672, 4)]


def model(channels, size, depthwise):
    rng = np.random.default_rng(channels * 1000 + size)
    inits = [
        numpy_helper.from_array(
            rng.standard_normal((channels, 3, 1, 1)).astype(np.float32) * 0.3, "pw_w"
        )
    ]
    nodes = [helper.make_node("Conv", ["x", "pw_w"], ["pw"], kernel_shape=[1, 1])]
    last = "pw"
    if depthwise:
        inits.append(
            numpy_helper.from_array(
                rng.standard_normal((channels, 1, 3, 3)).astype(np.float32) * 0.3, "dw_w"
            )
        )
        nodes.append(
            helper.make_node(
                "Conv", ["pw", "dw_w"], ["dw"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                group=channels,
            )
        )
        last = "dw"
    nodes.append(helper.make_node("GlobalAveragePool", [last], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def time_ort(path, runs):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(s.get_inputs()[0].shape).astype(np.float32)
    for _ in range(50):
        s.run(None, {"x": x})
    t = []
    for _ in range(runs):
        a = time.perf_counter()
        s.run(None, {"x": x})
        t.append((time.perf_counter() - a) * 1e6)
    return float(np.median(t))


def main():
    out = Path(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    out.mkdir(parents=True, exist_ok=True)
    for c, s in SHAPES:
        for dw in (False, True):
            name = f"{'dw' if dw else 'pw'}-{c}-{s}.onnx"
            onnx.save(model(c, s, dw), out / name)
            print(json.dumps({"file": name, "channels": c, "size": s,
                              "onnxruntime_p50_us": time_ort(out / name, runs)}))


if __name__ == "__main__":
    main()
