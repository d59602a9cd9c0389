"""Writes four random-weight 32x32 encoders of different shapes, to see whether an
architecture choice changes how tract compares with onnxruntime on this CPU (BENCHMARKS.md).

Usage: arch_probe.py OUT_DIR
Then: oodmon-edge bench --model OUT_DIR/NAME.onnx --frames 2000, and
      bench/edge_reference.py 2000 OUT_DIR/*.onnx
ref: the edge encoder's shape (3x3 stem, four residual stages 16-32-64-128);
dws: depthwise-separable stages; patch: a 2x2 stride-2 stem, then residual stages at
16x16 and below; s2stem: a 3x3 stride-2 stem, the same.
"""
import sys

import numpy as np
import onnx
from onnx import helper as h, TensorProto as T, numpy_helper as nh
rng = np.random.default_rng(0)
def build(name, layers, emb=128):
    nodes, inits = [], []
    x = "input"; c = 3; idx = [0]
    def conv(x, cin, cout, k, s, group=1, relu=True):
        i = idx[0]; idx[0] += 1
        w = (rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2 / (cin // group * k * k))).astype(np.float32)
        b = np.zeros(cout, np.float32)
        inits.extend([nh.from_array(w, f"w{i}"), nh.from_array(b, f"b{i}")])
        p = k // 2 if k % 2 == 1 else 0
        nodes.append(h.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=group))
        if relu:
            nodes.append(h.make_node("Relu", [f"c{i}"], [f"r{i}"])); return f"r{i}"
        return f"c{i}"
    for l in layers:
        kind = l[0]
        if kind == "conv":
            _, cout, k, s = l; x = conv(x, c, cout, k, s); c = cout
        elif kind == "res":  # basic residual block
            _, cout, s = l
            a = conv(x, c, cout, 3, s); bb = conv(a, cout, cout, 3, 1, relu=False)
            sc = x if (s == 1 and c == cout) else conv(x, c, cout, 1, s, relu=False)
            i = idx[0]; idx[0] += 1
            nodes.append(h.make_node("Add", [bb, sc], [f"a{i}"])); nodes.append(h.make_node("Relu", [f"a{i}"], [f"ar{i}"]))
            x = f"ar{i}"; c = cout
        elif kind == "dws":
            _, cout, s = l
            d = conv(x, c, c, 3, s, group=c); x = conv(d, c, cout, 1, 1); c = cout
    nodes.append(h.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(h.make_node("Flatten", ["gap"], ["flat"]))
    wf = (rng.standard_normal((c, emb)) / np.sqrt(c)).astype(np.float32)
    inits.append(nh.from_array(wf, "wf")); inits.append(nh.from_array(np.zeros(emb, np.float32), "bf"))
    nodes.append(h.make_node("Gemm", ["flat", "wf", "bf"], ["embedding"]))
    g = h.make_graph(nodes, name, [h.make_tensor_value_info("input", T.FLOAT, [1, 3, 32, 32])],
                     [h.make_tensor_value_info("embedding", T.FLOAT, [1, emb])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)]); m.ir_version = 8
    onnx.checker.check_model(m); onnx.save(m, f"{sys.argv[1]}/{name}.onnx")
build("ref", [("conv", 16, 3, 1), ("res", 16, 1), ("res", 32, 2), ("res", 64, 2), ("res", 128, 2)])
build("dws", [("conv", 16, 3, 1), ("dws", 16, 1), ("dws", 32, 2), ("dws", 32, 1), ("dws", 64, 2), ("dws", 64, 1), ("dws", 128, 2), ("dws", 128, 1)])
build("patch", [("conv", 32, 2, 2), ("res", 32, 1), ("res", 64, 2), ("res", 128, 2)])
build("s2stem", [("conv", 32, 3, 2), ("res", 32, 1), ("res", 64, 2), ("res", 128, 2)])
