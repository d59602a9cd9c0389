#!/usr/bin/env python3
"""How much an int8 QDQ encoder's embedding moves when its arithmetic moves by a last bit:
the evidence for why backends that sum in another order (tract-cuda's cuDNN and cuBLAS,
another CPU's kernels, onnxruntime's fused kernels) disagree on the shipped int8 bundle
while agreeing exactly on its float network (BENCHMARKS.md, "Edge on a GPU").

The file runs in PyTorch with the file's own rounding (`onnx_torch.OnnxTorch`, precision
`qdq`: round half to even, saturate) on CIFAR-10 test images (bilinear to the file's input
size, the file's mean and std). Three probes, each against the unperturbed run, as the
relative L2 distance of the embeddings:
- `noise`: every convolution output times (1 + EPS N(0, 1)), EPS = 1e-7 (about one float32
  ulp), a stand-in for a different summation order;
- `f64`: every convolution computed in float64 (more exact, not less);
- `step`: one element of the first quantized activation one step up (a single rounding
  decision flipped).
Then, per quantized activation, how many int8 steps a nonzero value uses (median and 99th
percentile of |q - zero point|): few steps mean one flipped rounding is a large relative
change, and these flips spread through every later requantization.

Usage: int8_sensitivity.py MODEL.onnx CIFAR10_TEST_BATCH.bin [--images 32] [--seed 0]
Prints one JSON object. CPU only; torch and onnx from the project's venv.
"""
import argparse
import json
import os
import sys

import numpy as np
import onnx
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_torch import OnnxTorch  # noqa: E402


def cifar_images(path, count, size, mean, std):
    raw = np.fromfile(path, np.uint8).reshape(-1, 3073)[:count, 1:]
    x = torch.from_numpy(raw.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)


def relative(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def summary(values):
    v = np.asarray(values) * 100
    return {"median_pct": round(float(np.median(v)), 3), "max_pct": round(float(v.max()), 3),
            "min_pct": round(float(v.min()), 3),
            "over_1pct": int(np.sum(v > 1.0)), "images": len(v)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("cifar_test_batch")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    graph = onnx.load(args.model).graph
    meta = {p.key: p.value for p in onnx.load(args.model, load_external_data=False).metadata_props}
    spec = json.loads(meta["oodmon.preprocessing"])
    if spec["width"] != spec["height"]:
        raise SystemExit("a square input is expected")
    x = cifar_images(args.cifar_test_batch, args.images, spec["width"], spec["mean"], spec["std"])
    net = OnnxTorch(args.model, "cpu", "qdq")
    op_of = {n.output[0]: n for n in graph.node}
    if not any(n.op_type == "QuantizeLinear" and n.input[0] not in net.consts for n in graph.node):
        raise SystemExit(f"{args.model} has no quantized activations: not an int8 QDQ file")
    plain = list(net.steps)
    refs = [net(x[i:i + 1]) for i in range(len(x))]

    def probe(make_steps):
        out = []
        for i in range(len(x)):
            net.steps = make_steps(i)
            out.append(relative(net(x[i:i + 1]), refs[i]))
        net.steps = plain
        return summary(out)

    def noisy(i):
        gen = torch.Generator().manual_seed(args.seed * 1000 + i)

        def wrap(fn):
            return lambda env: (lambda y: y * (1 + 1e-7 * torch.randn(y.shape, generator=gen)))(fn(env))
        return [(o, wrap(fn) if op_of[o].op_type == "Conv" else fn) for o, fn in plain]

    def in_f64(i):
        def wrap(node):
            a = {t.name: onnx.helper.get_attribute_value(t) for t in node.attribute}
            w = torch.as_tensor(np.array(net.consts[node.input[1]], np.float64))
            b = (torch.as_tensor(np.array(net.consts[node.input[2]], np.float64))
                 if len(node.input) > 2 and node.input[2] else None)
            top, left, bottom, right = list(a.get("pads", [0, 0, 0, 0]))
            src = node.input[0]
            return lambda env: F.conv2d(
                F.pad(env[src].double(), (left, right, top, bottom)), w, b,
                tuple(a.get("strides", [1, 1])), 0, tuple(a.get("dilations", [1, 1])),
                int(a.get("group", 1))).float()
        return [(o, wrap(op_of[o]) if op_of[o].op_type == "Conv" else fn) for o, fn in plain]

    first_q = next(o for o, _ in plain if op_of[o].op_type == "QuantizeLinear")

    def stepped(i):
        rng = np.random.RandomState(args.seed * 1000 + i)

        def wrap(fn):
            def run(env):
                q = fn(env).clone()
                flat = q.view(-1)
                flat[rng.randint(flat.numel())] += 1
                return q
            return run
        return [(o, wrap(fn) if o == first_q else fn) for o, fn in plain]

    result = {"model": args.model, "images": len(x), "torch": torch.__version__,
              "noise_1e-7": probe(noisy), "conv_f64": probe(in_f64),
              "one_step_first_activation": probe(stepped)}

    # steps used by each quantized activation
    levels = []
    quantized = [(o, n) for o, n in op_of.items()
                 if n.op_type == "QuantizeLinear" and n.input[0] not in net.consts]
    seen = {o: [] for o, _ in quantized}
    net.steps = [(o, (lambda fn, o: (lambda env: seen[o].append(fn(env)) or seen[o][-1]))(fn, o)
                  if o in seen else fn) for o, fn in plain]
    for i in range(len(x)):
        net(x[i:i + 1])
    net.steps = plain
    for o, n in quantized:
        zp = np.asarray(net.consts[n.input[2]]) if len(n.input) > 2 else np.zeros((), np.uint8)
        v = torch.cat([t.flatten() for t in seen[o]]) - float(zp.reshape(-1)[0])
        nz = v.abs()[v != 0]
        levels.append({"activation": o, "dtype": str(zp.dtype),
                       "zero_share": round(float((v == 0).float().mean()), 3),
                       "median_steps": float(nz.median()) if len(nz) else 0.0,
                       "p99_steps": float(torch.quantile(nz[:100000].float(), 0.99)) if len(nz) else 0.0})
    signed = [lv["median_steps"] for lv in levels if lv["dtype"] == "int8"]
    unsigned = [lv["median_steps"] for lv in levels if lv["dtype"] == "uint8"]
    result["activations"] = len(levels)
    result["median_steps_int8_activations"] = [min(signed), float(np.median(signed)), max(signed)] if signed else None
    result["median_steps_uint8_activations"] = [min(unsigned), float(np.median(unsigned)), max(unsigned)] if unsigned else None
    result["per_activation"] = levels
    print(json.dumps(result))


if __name__ == "__main__":
    main()
