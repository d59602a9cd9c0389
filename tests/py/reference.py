"""Reference values from NumPy and scikit-learn for oodmon's exactness tests.

Usage: reference.py DIR. Reads the .npy inputs the Rust test wrote into DIR and writes
DIR/reference.json. Each quantity is computed independently of oodmon, the way a user of
the Python ecosystem would compute it.
"""
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

LOW_RANK = 5  # the rank of `mahalanobis++:5` in tests/tests/e2e/reference.rs


def metrics(id_scores, ood_scores):
    y_ood = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    s = np.r_[id_scores, ood_scores]
    fpr, tpr, _ = roc_curve(1 - y_ood, -s, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(y_ood, s),
        "aupr_out": average_precision_score(y_ood, s),
        "aupr_in": average_precision_score(1 - y_ood, -s),
        "fpr_at_95_tpr": float(fpr[np.argmax(tpr >= 0.95)]),
    }


def scores(train, labels, queries, knn_k):
    x = train.astype(np.float64)
    q = queries.astype(np.float64)
    classes = np.unique(labels)
    mu = np.stack([x[labels == c].mean(0) for c in classes])
    out = {}
    d = ((q[:, None, :] - mu[None]) ** 2).sum(-1)
    out["euclidean"] = np.sqrt(d.min(1))
    out["euclidean_nearest"] = d.argmin(1)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    mn = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    out["cosine"] = (1 - qn @ mn.T).min(1)
    centred = x - mu[np.searchsorted(classes, labels)]
    prec = LedoitWolf(assume_centered=True).fit(centred).precision_
    diff = q[:, None, :] - mu[None]
    out["mahalanobis"] = np.sqrt(np.einsum("nkd,de,nke->nk", diff, prec, diff).min(1))
    per = []
    for i, c in enumerate(classes):
        p = LedoitWolf(assume_centered=True).fit(centred[labels == c]).precision_
        dd = q - mu[i]
        per.append(np.einsum("nd,de,ne->n", dd, p, dd))
    out["mahalanobis_per_cluster"] = np.sqrt(np.stack(per, 1).min(1))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    # Mahalanobis++ (Mueller & Hein 2025): tied Mahalanobis after L2 normalisation
    mun = np.stack([xn[labels == c].mean(0) for c in classes])
    precn = LedoitWolf(assume_centered=True).fit(xn - mun[np.searchsorted(classes, labels)]).precision_
    diffn = qn[:, None, :] - mun[None]
    out["mahalanobis_pp"] = np.sqrt(np.einsum("nkd,de,nke->nk", diffn, precn, diffn).min(1))
    # Mahalanobis++ with a rank-R precision (probabilistic PCA of the shrunk covariance):
    # the R leading eigenvalues kept, the others replaced by their mean
    covn = LedoitWolf(assume_centered=True).fit(xn - mun[np.searchsorted(classes, labels)]).covariance_
    lam, vec = np.linalg.eigh(covn)
    lam, vec = lam[::-1], vec[:, ::-1]
    r = LOW_RANK
    tail = lam[r:].mean()
    low = (vec[:, :r] / lam[:r]) @ vec[:, :r].T + (np.eye(len(lam)) - vec[:, :r] @ vec[:, :r].T) / tail
    out["mahalanobis_pp_low_rank"] = np.sqrt(np.einsum("nkd,de,nke->nk", diffn, low, diffn).min(1))
    # relative Mahalanobis (Ren et al. 2021): squared class distance minus the squared
    # distance to one Gaussian fitted on all training data
    mu0 = x.mean(0)
    prec0 = LedoitWolf(assume_centered=True).fit(x - mu0).precision_
    md0 = np.einsum("nd,de,ne->n", q - mu0, prec0, q - mu0)
    out["background_mahalanobis2"] = md0
    out["relative_mahalanobis"] = np.einsum("nkd,de,nke->nk", diff, prec, diff).min(1) - md0
    dist = np.sqrt(np.maximum(((qn[:, None, :] - xn[None]) ** 2).sum(-1), 0))
    out["knn"] = np.sort(dist, axis=1)[:, knn_k - 1]
    return {k: v.tolist() for k, v in out.items()}


def main():
    root = Path(sys.argv[1])
    load = lambda name: np.load(root / name)
    spec = json.loads((root / "spec.json").read_text())
    ref = {
        "metrics": metrics(load("id_scores.npy"), load("ood_scores.npy")),
        "scores": scores(load("train.npy"), load("labels.npy"), load("queries.npy"), spec["knn_k"]),
        "kmeans_inertia": {
            str(k): float(KMeans(n_clusters=k, random_state=0).fit(load("kmeans.npy")).inertia_)
            for k in spec["kmeans_k"]
        },
    }
    (root / "reference.json").write_text(json.dumps(ref))


if __name__ == "__main__":
    main()
