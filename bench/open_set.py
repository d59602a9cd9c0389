"""The open-set (near-OOD) protocol on CIFAR-10: 6 known classes, 4 unknown, over 5
class splits with fixed seeds, reported as mean +- std AUROC and FPR@95TPR.

Usage: open_set.py CALIBRATE_BIN STUDY_DIR NAME [NAME ...]

For each NAME it reads STUDY_DIR/embeddings/NAME/{train,test}.npy with their labels (a
model's embeddings of the CIFAR-10 training and test images, as `cargo xtask study`
writes them). Per split (seed s: numpy.random.default_rng(s).permutation(10)[:6] are the
known classes) it fits on the known classes' training embeddings (80%; the other 20%
calibrate the threshold), takes the known classes' test images as ID and the unknown
classes' test images as OOD, and runs `oodmon-calibrate grid` (class centroids, one
global threshold) for each metric. The model never saw a class split: for frozen
features this is the standard protocol; for a model trained on all 10 classes it is not
(its encoder has seen the unknown classes, which flatters it), and the table says so.
"""
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

METRICS = "cosine,mahalanobis,mahalanobis++,relative-mahalanobis,knn:50"
SEEDS = range(5)


def split_run(calibrate, emb, seed, work):
    train = np.load(emb / "train.npy")
    labels = np.load(emb / "train_labels.npy")
    test = np.load(emb / "test.npy")
    test_labels = np.load(emb / "test_labels.npy")
    known = np.sort(np.random.default_rng(seed).permutation(10)[:6])
    remap = {c: i for i, c in enumerate(known)}
    is_known = np.isin(labels, known)
    x, y = train[is_known], np.array([remap[c] for c in labels[is_known]], dtype=np.int64)
    order = np.random.default_rng(100 + seed).permutation(len(x))
    cut = int(0.8 * len(x))
    fit, cal = order[:cut], order[cut:]
    np.save(work / "train.npy", x[fit])
    np.save(work / "labels.npy", y[fit])
    np.save(work / "calib.npy", x[cal])
    np.save(work / "test.npy", test[np.isin(test_labels, known)])
    np.save(work / "unknown.npy", test[~np.isin(test_labels, known)])
    subprocess.run(
        [
            str(calibrate), "grid",
            "--train", str(work / "train.npy"), "--labels", str(work / "labels.npy"),
            "--calib", str(work / "calib.npy"), "--test", str(work / "test.npy"),
            "--ood", f"unknown={work / 'unknown.npy'}",
            "--clusters", "class", "--metrics", METRICS, "--normalize", "off",
            "--thresholds", "global", "--out", str(work / "grid"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with open(work / "grid" / "grid.csv") as f:
        return {r["metric"]: r for r in csv.DictReader(f)}, known


def main():
    calibrate, root, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    print("| model | metric | AUROC mean +- std | FPR@95TPR mean +- std | ID false alarms |")
    print("|---|---|---|---|---|")
    splits = []
    for name in names:
        per_metric = {}
        for seed in SEEDS:
            with tempfile.TemporaryDirectory() as d:
                rows, known = split_run(calibrate, root / "embeddings" / name, seed, Path(d))
            if name == names[0]:
                splits.append(known)
            for metric, r in rows.items():
                per_metric.setdefault(metric, []).append(
                    (float(r["auroc"]), float(r["fpr_at_95_tpr"]), float(r["id_false_alarm"]))
                )
        for metric, v in per_metric.items():
            a = 100 * np.array(v)
            print(
                f"| {name} | {metric} | {a[:, 0].mean():.2f} +- {a[:, 0].std():.2f} | "
                f"{a[:, 1].mean():.2f} +- {a[:, 1].std():.2f} | {a[:, 2].mean():.2f}% |"
            )
    print("\nKnown classes per seed: " + "; ".join(
        f"{s}: {', '.join(str(c) for c in k)}" for s, k in zip(SEEDS, splits)))


if __name__ == "__main__":
    main()
