"""The open-set (near-OOD) protocol on CIFAR-10: 6 known classes, 4 unknown, over 5
class splits with fixed seeds, reported as mean +- std AUROC and FPR@95TPR.

Usage: open_set.py CALIBRATE_BIN STUDY_DIR NAME [NAME ...]
       open_set.py --per-split [--seeds 0,1,...] CALIBRATE_BIN STUDY_DIR MODEL [MODEL ...]

For each NAME it reads STUDY_DIR/embeddings/NAME/{train,test}.npy with their labels (a
model's embeddings of the CIFAR-10 training and test images, as `cargo xtask study`
writes them). Per split (seed s: numpy.random.default_rng(s).permutation(10)[:6] are the
known classes) it fits on the known classes' training embeddings (80%; the other 20%
calibrate the threshold), takes the known classes' test images as ID and the unknown
classes' test images as OOD, and runs `oodmon-calibrate grid` (class centroids and 3
k-means clusters per class, one global threshold) for each metric. The model never saw a
class split: for frozen features this is the standard protocol; for a model trained on all 10 classes it is not
(its encoder has seen the unknown classes, which flatters it), and the table says so.

With --per-split, MODEL was trained once per split on its known classes only
(`cargo xtask study --open-set MODEL`): for seed s it reads
STUDY_DIR/embeddings/open-MODEL-s{s}-int8/ (the run's own training split, labelled 0-5 in
the order of its known classes, its held-out split, and the whole test set with the
original labels) and checks the run's classes (runs/open-MODEL-s{s}/config.json) against
the split above. Centroids come from the whole training split, the threshold from the
held-out split: the encoder saw neither the unknown classes nor the calibration images.
--seeds takes a subset of the five splits (the table then says over which); the protocol's
figure is the mean over all five. The last column lists each split's AUROC in the order
of the splits run.
"""
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

METRICS = "cosine,mahalanobis,mahalanobis++,mahalanobis++:128,relative-mahalanobis,knn:50"
# class centroids, and the shipped default's 3 k-means clusters per class
CLUSTERS = "class,kmeans-per-class:3"
SEEDS = range(5)


def split_run(calibrate, emb, seed, work):
    train = np.load(emb / "train.npy")
    labels = np.load(emb / "train_labels.npy")
    test = np.load(emb / "test.npy")
    test_labels = np.load(emb / "test_labels.npy")
    known = known_classes(seed)
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
    return grid(calibrate, work / "train.npy", work / "labels.npy", work / "calib.npy", work), known


def known_classes(seed):
    return np.sort(np.random.default_rng(seed).permutation(10)[:6])


def split_embeddings(root, model, seed):
    """(known classes, int8 embeddings folder) of the split's own run, checked against the
    split: a run trained on other classes would flatter the protocol."""
    known = known_classes(seed)
    run = root / "runs" / f"open-{model}-s{seed}"
    trained_on = json.loads((run / "config.json").read_text()).get("classes")
    if trained_on != known.tolist():
        sys.exit(f"{run}: trained on classes {trained_on}, the split is {known.tolist()}")
    return known, root / "embeddings" / f"open-{model}-s{seed}-int8"


def per_split_run(calibrate, root, model, seed, work):
    """The split's own model: fit on its training split, threshold on its held-out split."""
    known, emb = split_embeddings(root, model, seed)
    test = np.load(emb / "test.npy")
    test_labels = np.load(emb / "test_labels.npy")
    np.save(work / "test.npy", test[np.isin(test_labels, known)])
    np.save(work / "unknown.npy", test[~np.isin(test_labels, known)])
    return grid(calibrate, emb / "train.npy", emb / "train_labels.npy", emb / "calib.npy", work), known


def grid(calibrate, train, labels, calib, work):
    subprocess.run(
        [
            str(calibrate), "grid",
            "--train", str(train), "--labels", str(labels),
            "--calib", str(calib), "--test", str(work / "test.npy"),
            "--ood", f"unknown={work / 'unknown.npy'}",
            "--clusters", CLUSTERS, "--metrics", METRICS, "--normalize", "off",
            "--thresholds", "global", "--out", str(work / "grid"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with open(work / "grid" / "grid.csv") as f:
        return {(r["clusters"], r["metric"]): r for r in csv.DictReader(f)}


def main():
    per_split = sys.argv[1] == "--per-split"
    args = sys.argv[2:] if per_split else sys.argv[1:]
    seeds = list(SEEDS)
    if per_split and args[0] == "--seeds":
        seeds = [int(k) for k in args[1].split(",")]
        if not seeds or any(k not in SEEDS for k in seeds) or len(set(seeds)) != len(seeds):
            sys.exit(f"--seeds {args[1]}: the splits are 0-4, each once")
        args = args[2:]
    calibrate, root, names = Path(args[0]), Path(args[1]), args[2:]
    if seeds != list(SEEDS):
        print(f"Over {len(seeds)} of the 5 splits ({', '.join(map(str, seeds))}), not the "
              "protocol's five: a partial figure.\n")
    print("| model | clusters | metric | AUROC mean +- std | FPR@95TPR mean +- std | "
          "unknown flagged | ID false alarms | AUROC per split |")
    print("|---|---|---|---|---|---|---|---|")
    splits = []
    for name in names:
        per_metric = {}
        for seed in seeds:
            with tempfile.TemporaryDirectory() as d:
                if per_split:
                    rows, known = per_split_run(calibrate, root, name, seed, Path(d))
                else:
                    rows, known = split_run(calibrate, root / "embeddings" / name, seed, Path(d))
            if name == names[0]:
                splits.append(known)
            for metric, r in rows.items():
                per_metric.setdefault(metric, []).append(
                    (float(r["auroc"]), float(r["fpr_at_95_tpr"]), float(r["ood_detection"]),
                     float(r["id_false_alarm"]))
                )
        for (clusters, metric), v in per_metric.items():
            a = 100 * np.array(v)
            print(
                f"| {name} | {clusters} | {metric} | {a[:, 0].mean():.2f} +- {a[:, 0].std():.2f} | "
                f"{a[:, 1].mean():.2f} +- {a[:, 1].std():.2f} | {a[:, 2].mean():.2f}% | "
                f"{a[:, 3].mean():.2f}% | {' / '.join(f'{x:.2f}' for x in a[:, 0])} |"
            )
    print("\nKnown classes per seed: " + "; ".join(
        f"{s}: {', '.join(str(c) for c in k)}" for s, k in zip(seeds, splits)))


if __name__ == "__main__":
    main()
