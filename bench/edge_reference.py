"""Times ONNX encoders in onnxruntime on one thread: the peer of `oodmon-edge bench --model`.

Usage: edge_reference.py RUNS MODEL.onnx [MODEL.onnx ...]
Prints one JSON object per model: median and p99 per-inference latency (us) after 50
warm-up runs, the same fixed input pattern as oodmon-edge's, and the process's peak RSS.
"""
import json
import resource
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    runs = int(sys.argv[1])
    for path in sys.argv[2:]:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        n = int(np.prod(shape))
        x = (((np.arange(n) * 7919) % 1000) / 500.0 - 1.0).astype(np.float32).reshape(shape)
        feed = {inp.name: x}
        for _ in range(50):
            sess.run(None, feed)
        times = []
        for _ in range(runs):
            t = time.perf_counter_ns()
            sess.run(None, feed)
            times.append((time.perf_counter_ns() - t) / 1000)
        times.sort()
        at = lambda q: times[round((len(times) - 1) * q)]
        print(json.dumps({
            "model": path,
            "runs": runs,
            "p50_us": at(0.5),
            "p99_us": at(0.99),
            "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "onnxruntime": ort.__version__,
        }))


if __name__ == "__main__":
    main()
