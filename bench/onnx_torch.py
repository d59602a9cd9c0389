"""oodmon's exported ONNX encoders run by PyTorch: the GPU peer of `oodmon-edge bench
--backend tract-cuda` (issue 16), on the same file and so the same weights.

PyTorch cannot read ONNX, and onnxruntime's CUDA provider is not in the `onnxruntime`
wheel; rather than an ONNX-to-PyTorch converter package, this walks the graph once and
turns each node into a PyTorch call. It covers the operators oodmon's exporter writes
(onnx/src: Conv with group and asymmetric pads, Clip, Relu, Add, Mul, GlobalAveragePool,
Flatten, Gemm, MatMul, Reshape, QuantizeLinear, DequantizeLinear) and refuses any other.

Two precisions for an int8 QDQ file:
- `qdq`: activations are quantized and dequantized as the file says (round half to even,
  saturate), so the embeddings follow tract's up to float rounding; weights are
  dequantized once at load.
- `float`: activation QuantizeLinear/DequantizeLinear pairs become identities, the
  network a user would run in float on a GPU (weights still the int8 ones, dequantized).

Usage as a module: `OnnxTorch(path, device, precision)(x)` with x an NCHW float tensor.
As a script: `onnx_torch.py MODEL.onnx --device cuda|cpu [--precision qdq|float]
[--runs N] [--graph]` prints one JSON line of per-inference latency percentiles (us),
timing with torch.cuda.synchronize() and, with --graph, replaying a captured CUDA graph.
"""
import argparse
import json
import math
import time

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class OnnxTorch:
    """A straight-line program of PyTorch calls, one per ONNX node, constants on device."""

    def __init__(self, path, device="cpu", precision="qdq"):
        if precision not in ("qdq", "float"):
            raise ValueError(f"precision {precision!r}: qdq or float")
        model = onnx.load(str(path))
        g = model.graph
        self.device = torch.device(device)
        self.consts = {}
        for init in g.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        for node in g.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
        self.input = g.input[0].name
        self.output = g.output[0].name
        self.precision = precision
        # tensors on the device, dequantized weights folded once
        self.tensors = {}
        self.steps = []
        for node in g.node:
            if node.op_type == "Constant":
                continue
            step = self._compile(node)
            if step is not None:
                self.steps.append(step)

    # --- constants ----------------------------------------------------------------------

    def _is_const(self, name):
        return name in self.consts

    def _const(self, name, dtype=torch.float32):
        return torch.as_tensor(np.asarray(self.consts[name]), device=self.device).to(dtype)

    def _dequantized(self, q, scale, zp, axis):
        q = np.asarray(self.consts[q]).astype(np.float32)
        s = np.asarray(self.consts[scale], np.float32)
        z = np.asarray(self.consts[zp]).astype(np.float32) if zp else np.zeros_like(s)
        if s.ndim == 1 and s.size > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            s, z = s.reshape(shape), z.reshape(shape)
        return (q - z) * s

    # --- nodes --------------------------------------------------------------------------

    def _compile(self, node):
        op, ins, out, a = node.op_type, list(node.input), node.output[0], _attrs(node)
        if op == "DequantizeLinear" and self._is_const(ins[0]):
            zp = ins[2] if len(ins) > 2 else None
            self.consts[out] = self._dequantized(ins[0], ins[1], zp, a.get("axis", 1))
            return None
        if op == "QuantizeLinear":
            if self.precision == "float":
                return (out, lambda env, i=ins[0]: env[i])
            scale = float(np.asarray(self.consts[ins[1]]).reshape(-1)[0])
            zp_arr = np.asarray(self.consts[ins[2]]) if len(ins) > 2 else np.zeros((), np.uint8)
            info = np.iinfo(zp_arr.dtype)
            zp = float(zp_arr.reshape(-1)[0])
            lo, hi = float(info.min), float(info.max)
            # quantized values kept as float: the DequantizeLinear below undoes the offset
            return (out, lambda env, i=ins[0]: torch.clamp(
                torch.round(env[i] / scale) + zp, lo, hi))
        if op == "DequantizeLinear":
            if self.precision == "float":
                return (out, lambda env, i=ins[0]: env[i])
            scale = float(np.asarray(self.consts[ins[1]]).reshape(-1)[0])
            zp = float(np.asarray(self.consts[ins[2]]).reshape(-1)[0]) if len(ins) > 2 else 0.0
            return (out, lambda env, i=ins[0]: (env[i] - zp) * scale)
        if op == "Conv":
            w = torch.as_tensor(np.array(self.consts[ins[1]], np.float32), device=self.device)
            b = (torch.as_tensor(np.array(self.consts[ins[2]], np.float32), device=self.device)
                 if len(ins) > 2 and ins[2] else None)
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise SystemExit(f"Conv {out}: auto_pad is not supported")
            stride = tuple(a.get("strides", [1, 1]))
            dilation = tuple(a.get("dilations", [1, 1]))
            groups = int(a.get("group", 1))
            top, left, bottom, right = pads
            if top == bottom and left == right:
                return (out, lambda env, i=ins[0]: F.conv2d(
                    env[i], w, b, stride, (top, left), dilation, groups))
            return (out, lambda env, i=ins[0]: F.conv2d(
                F.pad(env[i], (left, right, top, bottom)), w, b, stride, 0, dilation, groups))
        if op == "Clip":
            lo = float(np.asarray(self.consts[ins[1]])) if len(ins) > 1 and ins[1] else None
            hi = float(np.asarray(self.consts[ins[2]])) if len(ins) > 2 and ins[2] else None
            return (out, lambda env, i=ins[0]: torch.clamp(env[i], lo, hi))
        if op == "Relu":
            return (out, lambda env, i=ins[0]: torch.relu(env[i]))
        if op in ("Add", "Mul"):
            fn = torch.add if op == "Add" else torch.mul
            x, y = ins
            if self._is_const(y):
                c = self._const(y)
                return (out, lambda env: fn(env[x], c))
            return (out, lambda env: fn(env[x], env[y]))
        if op == "GlobalAveragePool":
            return (out, lambda env, i=ins[0]: env[i].mean(dim=(2, 3), keepdim=True))
        if op == "Flatten":
            axis = int(a.get("axis", 1))
            return (out, lambda env, i=ins[0]: torch.flatten(env[i], axis))
        if op == "Reshape":
            shape = [int(v) for v in np.asarray(self.consts[ins[1]])]
            return (out, lambda env, i=ins[0]: torch.reshape(env[i], shape))
        if op in ("Gemm", "MatMul"):
            w = self._const(ins[1])
            if op == "Gemm" and a.get("transB", 0):
                w = w.t()
            w = w.contiguous()
            b = self._const(ins[2]) if op == "Gemm" and len(ins) > 2 and ins[2] else None
            if b is None:
                return (out, lambda env, i=ins[0]: env[i] @ w)
            return (out, lambda env, i=ins[0]: torch.addmm(b, env[i], w))
        raise SystemExit(f"node {node.name or out}: {op} is not supported by onnx_torch")

    @torch.inference_mode()
    def __call__(self, x):
        env = {self.input: x}
        for out, fn in self.steps:
            env[out] = fn(env)
        return env[self.output]


def cuda_graph_runner(net, shape, device="cuda"):
    """`net` captured as one CUDA graph on a static input of `shape`: a function from an
    input tensor (copied in) to the graph's static output (overwritten by the next call)."""
    static_in = torch.zeros(shape, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            net(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = net(static_in)

    def run(x):
        static_in.copy_(x)
        graph.replay()
        return static_out
    return run


def input_shape(path):
    """The model's input shape, a free batch dimension taken as 1."""
    return [d.dim_value or 1 for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]


def _percentiles(us):
    us = sorted(us)
    rank = lambda q: us[min(len(us) - 1, max(0, math.ceil(q * len(us)) - 1))]  # noqa: E731
    return {"p50_us": rank(0.5), "p99_us": rank(0.99), "runs": len(us)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", choices=("qdq", "float"), default="qdq")
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--graph", action="store_true", help="replay a captured CUDA graph")
    args = ap.parse_args()
    net = OnnxTorch(args.model, args.device, args.precision)
    x = torch.randn(*input_shape(args.model), device=args.device)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    run = lambda: net(x)  # noqa: E731
    if args.graph:
        replay = cuda_graph_runner(net, list(x.shape), args.device)
        run = lambda: replay(x)  # noqa: E731
    for _ in range(20):
        run()
    sync()
    us = []
    for _ in range(args.runs):
        t0 = time.perf_counter_ns()
        y = run()
        if cuda:
            y = y.cpu()
        sync()
        us.append((time.perf_counter_ns() - t0) // 1000)
    print(json.dumps({"model": args.model, "device": args.device,
                      "precision": args.precision, "graph": args.graph,
                      "torch": torch.__version__, **_percentiles(us)}))


if __name__ == "__main__":
    main()
