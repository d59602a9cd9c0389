"""The calibration benchmark's work done in NumPy and scikit-learn, on the very inputs the
Rust benchmark wrote (OODMON_BENCH_DATA). Prints nothing but progress; writes JSON.

Usage: calibration_reference.py DATA_DIR OUT.json [--quick]
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.metrics import pairwise_distances_argmin_min
from threadpoolctl import threadpool_info

KNN_BANK = 10_000
SMALL_QUERIES = 2_000 if "--quick" in sys.argv else 10_000


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e9  # ns, like criterion


def nearest(z, centres):
    """The usual NumPy idiom: squared norms, one GEMM, argmin."""
    d2 = (z * z).sum(1)[:, None] - 2.0 * (z @ centres.T) + (centres * centres).sum(1)[None, :]
    i = d2.argmin(1)
    return np.sqrt(np.maximum(d2[np.arange(len(z)), i], 0)), i


def main():
    data = Path(sys.argv[1])
    out = {"numpy": {}, "sklearn": {}, "kmeans": {}}
    x = np.load(data / "queries.npy")
    small = x[:SMALL_QUERIES]
    for k in (10, 100):
        train = np.load(data / f"train_k{k}.npy")
        labels = np.load(data / f"labels_k{k}.npy")
        mu = np.stack([train[labels == c].mean(0) for c in range(k)]).astype(np.float32)
        centred = train - mu[labels]
        prec = LedoitWolf(assume_centered=True).fit(centred).precision_
        chol = np.linalg.cholesky(prec).astype(np.float32)
        mun = mu / np.linalg.norm(mu, axis=1, keepdims=True)
        cases = {
            f"score/euclidean/k{k}": lambda: nearest(x, mu),
            f"score/cosine/k{k}": lambda: 1.0
            - ((x / np.linalg.norm(x, axis=1, keepdims=True)) @ mun.T).max(1),
            f"score/mahalanobis/k{k}": lambda: nearest(x @ chol, mu @ chol),
        }
        if k == 10:
            per = []
            for c in range(k):
                p = LedoitWolf(assume_centered=True).fit(centred[labels == c]).precision_
                per.append(np.linalg.cholesky(p).astype(np.float32))

            def per_cluster():
                d = np.stack([(((small - mu[c]) @ per[c]) ** 2).sum(1) for c in range(k)], 1)
                return np.sqrt(d.min(1)), d.argmin(1)

            rng = np.random.default_rng(0)
            bank = train[np.sort(rng.choice(len(train), min(KNN_BANK, len(train)), replace=False))]
            bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)

            def knn():
                q = small / np.linalg.norm(small, axis=1, keepdims=True)
                sim = q @ bank.T
                kth = -np.partition(-sim, 49, axis=1)[:, 49]
                return np.sqrt(np.maximum(2 - 2 * kth, 0))

            cases["score/mahalanobis-per-cluster/k10"] = per_cluster
            cases[f"score/knn:50/bank{KNN_BANK}"] = knn
            out["sklearn"]["score/euclidean/k10"] = median_time(
                lambda: pairwise_distances_argmin_min(x, mu), 5
            )
        for name, fn in cases.items():
            print(f"numpy {name}", file=sys.stderr, flush=True)
            out["numpy"][name] = median_time(fn, 5)
        out["sklearn"][f"score/euclidean/k{k}"] = median_time(
            lambda: pairwise_distances_argmin_min(x, mu), 5
        )
    km = np.load(data / "kmeans.npy")
    n, d = km.shape
    for k in (10, 100):
        name = f"kmeans/n{n}_d{d}/k{k}"
        print(f"sklearn {name}", file=sys.stderr, flush=True)
        model = KMeans(n_clusters=k, n_init=1, random_state=0, max_iter=300, tol=1e-4)
        out["sklearn"][name] = median_time(lambda: model.fit(km), 5)
        out["kmeans"][f"k{k}"] = {"inertia": float(model.inertia_), "iterations": int(model.n_iter_)}
    out["threadpools"] = [
        {key: info.get(key) for key in ("internal_api", "num_threads", "architecture", "version")}
        for info in threadpool_info()
    ]
    out["numpy_version"] = np.__version__
    Path(sys.argv[2]).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
