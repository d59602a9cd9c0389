#!/usr/bin/env python3
"""Which unknown classes pass in the open-set protocol, and as which known class.

The protocol's AUROC (bench/open_set.py) averages the four unknown classes of a split;
this breaks one rule down per class. For each split's own model (`cargo xtask study
--open-set MODEL`) it fits the rule on the run's training split (`oodmon-calibrate fit`),
thresholds it on the run's held-out split at 95% TPR, scores the whole test set
(`oodmon-calibrate score`) and prints, per class, the share flagged and the nearest known
class of the images that pass.

    python3 bench/open_set_per_class.py [--seeds 3,4] [--clusters kmeans-per-class:3] \
        [--metric mahalanobis++:128] CALIBRATE_BIN STUDY_DIR MODEL

The defaults are the shipped rule; STUDY_DIR and MODEL as for `open_set.py --per-split`.
"""
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from open_set import SEEDS, split_embeddings
from per_frame_auroc import scores

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def per_class(calibrate, root, model, seed, clusters, metric, work):
    known, emb = split_embeddings(root, model, seed)
    calib = work / "calib.json"
    subprocess.run(
        [str(calibrate), "fit", "--train", str(emb / "train.npy"),
         "--labels", str(emb / "train_labels.npy"), "--calib", str(emb / "calib.npy"),
         "--clusters", clusters, "--metric", metric, "--out", str(calib)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # the run's labels 0-5 are its known classes in ascending order
    cluster_class = known[np.array(json.loads(calib.read_text())["model"]["cluster_class"])]
    _, flagged, nearest = scores(calibrate, calib, emb / "test.npy", work / "test.csv")
    nearest = cluster_class[nearest]
    labels = np.load(emb / "test_labels.npy")
    print(f"\nSplit {seed}, {model}, {clusters} {metric} (known: "
          f"{', '.join(CIFAR10[c] for c in known)})\n")
    print("| test class | known? | flagged | passed, by nearest known class |")
    print("|---|---|---|---|")
    for c, name in enumerate(CIFAR10):
        m = labels == c
        passed = collections.Counter(CIFAR10[k] for k in nearest[m & ~flagged])
        top = ", ".join(f"{n} {k}" for n, k in passed.most_common(2))
        kind = "known" if c in known else "**unknown**"
        print(f"| {name} | {kind} | {100 * flagged[m].mean():.1f}% | {top} |")
    unknown = ~np.isin(labels, known)
    print(f"\nunknown flagged {100 * flagged[unknown].mean():.1f}%, "
          f"known {100 * flagged[~unknown].mean():.2f}%")


def main(argv):
    seeds, clusters, metric = list(SEEDS), "kmeans-per-class:3", "mahalanobis++:128"
    while argv and argv[0].startswith("--"):
        if len(argv) < 2:
            sys.exit(__doc__)
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--seeds":
            seeds = [int(k) for k in value.split(",")]
            if not seeds or any(k not in SEEDS for k in seeds):
                sys.exit(f"--seeds {value}: the splits are 0-4")
        elif flag == "--clusters":
            clusters = value
        elif flag == "--metric":
            metric = value
        else:
            sys.exit(f"unknown option {flag}\n{__doc__}")
    if len(argv) != 3:
        sys.exit(__doc__)
    calibrate, root, model = Path(argv[0]), Path(argv[1]), argv[2]
    for seed in seeds:
        with tempfile.TemporaryDirectory() as d:
            per_class(calibrate, root, model, seed, clusters, metric, Path(d))


if __name__ == "__main__":
    main(sys.argv[1:])
