"""Checks an ONNX encoder with the ONNX checker and runs it in onnxruntime.

Usage: onnx_reference.py MODEL.onnx INPUTS.npy OUT.npy
INPUTS.npy is float32 [n, 3*H*W] (one preprocessed image per row); OUT.npy receives the
embeddings [n, D]. Exits non-zero if the checker rejects the model.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main():
    model_path, inputs_path, out_path = sys.argv[1:4]
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.load(inputs_path).astype(np.float32)
    outs = [sess.run(None, {name: row.reshape([1, *shape[1:]])})[0][0] for row in x]
    np.save(out_path, np.stack(outs).astype(np.float32))


if __name__ == "__main__":
    main()
