#!/usr/bin/env python3
"""A prototype of two-score fusion (cosine with Mahalanobis++ at a rank), measured before
deciding whether to build it into the artifact (EVALUATION.md, "The combination, tried in
every form that keeps one scalar score").

Usage: score_fusion.py EMB_DIR DEMO_NPY

EMB_DIR holds a model's int8 embeddings as `cargo xtask study` writes them
(train.npy + train_labels.npy, calib.npy, test.npy, mnist.npy, dtd10.npy, noise.npy,
vtest.npy). DEMO_NPY is the demo's 144 frames embedded by the same encoder:

    bench/avi_frames.py edge/demo/scenario.avi D     # the frames' own JPEG bytes
    oodmon-calibrate embed-model --model ENCODER --data folder:D --split test --out DEMO_NPY

It refits k-means 3 per class (scikit-learn) on the L2-normalised training embeddings,
scores cosine (1 - cos) and Mahalanobis++ (the distance, not its square, as oodmon scores
it; Ledoit-Wolf tied covariance of the residuals; rank R keeps the R leading eigenvectors
and flattens the rest to their mean, as `mahalanobis++:R` does), and fuses each pair as max(s_cos / q_cos, s_maha / q_maha) with q the held-out
split's quantile, or as the smaller empirical p-value against the held-out split. One
global threshold at the held-out split's 95th percentile; prints the ID false-alarm rate
on the test set, AUROC / share flagged per OOD set and the demo's flagged frames per
24-frame segment (cat, astronaut, coins, cat, darkened cat, cat).
"""
import sys

import numpy as np
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

OOD = ["mnist", "dtd10", "noise", "vtest"]


def normalised(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    emb, demo = sys.argv[1], sys.argv[2]

    def load(name):
        return normalised(np.load(f"{emb}/{name}.npy").astype(np.float64))

    train, labels = load("train"), np.load(f"{emb}/train_labels.npy")
    centers, assign = [], np.zeros(len(train), int)
    for c in np.unique(labels):
        idx = np.where(labels == c)[0]
        km = KMeans(3, n_init=3, random_state=0).fit(train[idx])
        assign[idx] = len(centers) + km.labels_
        centers += list(km.cluster_centers_)
    centers = np.array(centers)
    cov = LedoitWolf(assume_centered=True).fit(train - centers[assign]).covariance_
    w, v = np.linalg.eigh(cov)
    w, v = w[::-1], v[:, ::-1]

    def mahalanobis(rank):
        r = rank or len(w)
        basis, rest = v[:, :r], (w[r:].mean() if r < len(w) else None)
        cp = centers @ basis

        def score(x):
            xp = x @ basis
            d = (((xp[:, None, :] - cp[None]) / np.sqrt(w[:r])) ** 2).sum(2)
            if rest is not None:
                full = ((x[:, None, :] - centers[None]) ** 2).sum(2)
                proj = ((xp[:, None, :] - cp[None]) ** 2).sum(2)
                d = d + (full - proj) / rest
            # the distance, not its square, as `oodmon-calibrate` scores it: the ratios
            # of the fusion below depend on it
            return np.sqrt(np.maximum(d.min(1), 0))

        return score

    unit = normalised(centers)
    scorers = {"cosine": lambda x: (1 - x @ unit.T).min(1)}
    for r in (16, 32, 64, 128, None):
        scorers[f"++:{r or 'full'}"] = mahalanobis(r)
    sets = {n: load(n) for n in ["calib", "test"] + OOD}
    sets["demo"] = normalised(np.load(demo).astype(np.float64))
    scores = {k: {n: f(x) for n, x in sets.items()} for k, f in scorers.items()}

    def auroc(id_scores, ood_scores):
        y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
        return 100 * roc_auc_score(y, np.r_[id_scores, ood_scores])

    def report(name, s):
        threshold = np.quantile(s["calib"], 0.95)
        flagged = lambda a: 100 * (a > threshold).mean()
        segments = [int((s["demo"][i * 24 : (i + 1) * 24] > threshold).sum()) for i in range(6)]
        cells = " ".join(f"{n} {auroc(s['test'], s[n]):.2f}/{flagged(s[n]):.1f}" for n in OOD)
        print(f"{name:26} FA {flagged(s['test']):.2f} | {cells} | demo {segments}")

    for k in scores:
        report(k, scores[k])
    for other in [k for k in scores if k != "cosine"]:
        pair = ["cosine", other]
        for q in (0.90, 0.95, 0.99):
            scale = {k: np.quantile(scores[k]["calib"], q) for k in pair}
            fused = {n: np.max([scores[k][n] / scale[k] for k in pair], 0) for n in sets}
            report(f"max(cosine,{other}) q{q:.2f}", fused)
        fused = {}
        for n in sets:
            p = []
            for k in pair:
                c = np.sort(scores[k]["calib"])
                p.append((len(c) - np.searchsorted(c, scores[k][n], "left") + 1) / (len(c) + 1))
            fused[n] = -np.log(np.min(p, 0))
        report(f"p-value(cosine,{other})", fused)


if __name__ == "__main__":
    main()
