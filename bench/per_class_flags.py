#!/usr/bin/env python3
"""Where one calibration's alarms fall, class by class.

A global threshold at 95% TPR fixes the ID false-alarm rate over all classes together, not
per class; and an OOD set's AUROC hides which of its kinds pass. This prints, for the ID
test images, the false-alarm rate of each true class, and for a labelled OOD set in
CIFAR-10 binary format (DTD10's `dtd10_test_32x32.bin`: label byte, then 3,072 pixel
bytes), the share of each of its classes flagged and the nearest ID class of the images
that pass.

    python3 bench/per_class_flags.py CALIBRATE CALIB.json ID_TEST.npy ID_LABELS.npy \
        OOD.npy OOD.bin OOD_CLASSES.txt [WORK_DIR]

CALIBRATE is the `oodmon-calibrate` binary; the .npy files are embeddings in file order
(`oodmon-trainer embed` or `oodmon-calibrate embed-model`, as the study makes them). The
scores, flags and nearest clusters come from `oodmon-calibrate score`, so they are the
product's own.
"""

import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from per_frame_auroc import scores


def main(argv):
    if len(argv) not in (8, 9):
        sys.exit(__doc__)
    calibrate, calib, id_npy, id_labels, ood_npy, ood_bin, ood_classes = argv[1:8]
    work = Path(argv[8]) if len(argv) == 9 else Path(tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    with open(calib) as f:
        bundle = json.load(f)
    cluster_class = np.array(bundle["model"]["cluster_class"])
    names = bundle["class_names"]

    _, flagged, nearest = scores(calibrate, calib, id_npy, str(work / "id.csv"))
    labels = np.load(id_labels)
    if len(labels) != len(flagged):
        sys.exit(f"{id_labels}: {len(labels)} labels for {len(flagged)} embeddings")
    print(f"ID test images: {len(flagged)}, false alarms {100 * flagged.mean():.2f}%")
    print(f"nearest class right: {100 * (cluster_class[nearest] == labels).mean():.2f}%")
    print("| ID class | false alarms |\n|---|---|")
    for c, name in enumerate(names):
        print(f"| {name} | {100 * flagged[labels == c].mean():.1f}% |")

    _, flagged, nearest = scores(calibrate, calib, ood_npy, str(work / "ood.csv"))
    raw = np.fromfile(ood_bin, dtype=np.uint8)
    if raw.size % 3073:
        sys.exit(f"{ood_bin}: not CIFAR-10 binary records of 3,073 bytes")
    ood_labels = raw.reshape(-1, 3073)[:, 0]
    if len(ood_labels) != len(flagged):
        sys.exit(f"{ood_bin}: {len(ood_labels)} images for {len(flagged)} embeddings")
    ood_names = Path(ood_classes).read_text().split()
    print(f"\nOOD images: {len(flagged)}, flagged {100 * flagged.mean():.1f}%")
    print("| OOD class | flagged | passed, by nearest ID class |\n|---|---|---|")
    for c in np.unique(ood_labels):
        m = ood_labels == c
        passed = collections.Counter(names[k] for k in cluster_class[nearest[m & ~flagged]])
        top = ", ".join(f"{n} {k}" for n, k in passed.most_common(3))
        print(f"| {ood_names[c]} | {100 * flagged[m].mean():.1f}% | {top} |")
    passed = collections.Counter(names[k] for k in cluster_class[nearest[~flagged]])
    print("\npassed, by nearest ID class: " + ", ".join(f"{n} {k}" for n, k in passed.most_common()))


if __name__ == "__main__":
    main(sys.argv)
