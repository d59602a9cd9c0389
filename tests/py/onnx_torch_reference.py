"""Runs an ONNX encoder through bench/onnx_torch.py (the GPU peer's PyTorch interpreter)
on the CPU, so that the test command checks the peer computes what tract computes.

Usage: onnx_torch_reference.py MODEL.onnx INPUTS.npy OUT.npy qdq|float
INPUTS.npy is float32 [n, 3*H*W]; OUT.npy receives the embeddings [n, D].
"""
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from onnx_torch import OnnxTorch  # noqa: E402


def main():
    model_path, inputs_path, out_path, precision = sys.argv[1:5]
    torch.set_num_threads(1)
    shape = [d.dim_value for d in
             onnx.load(model_path).graph.input[0].type.tensor_type.shape.dim]
    net = OnnxTorch(model_path, "cpu", precision)
    x = np.load(inputs_path).astype(np.float32)
    outs = [net(torch.from_numpy(row.reshape([1, *shape[1:]]).copy())).numpy()[0] for row in x]
    np.save(out_path, np.stack(outs).astype(np.float32))


if __name__ == "__main__":
    main()
