#!/usr/bin/env python3
"""Per-frame AUROC of an OOD video against the ID test images, for one calibration.

An AUROC over a whole video averages its frames: each frame's own AUROC is the share of ID
test images it outscores (ties one half), and their mean is the video's AUROC. A monitor is
judged by its worst frames too, so this prints the mean, the worst frame, low percentiles,
the share flagged at the calibration's rule and the longest run of consecutive frames that
pass (what a k-of-n debouncer would have to bridge), and the nearest ID class of the frames
that pass (where the encoder puts them).

    python3 bench/per_frame_auroc.py CALIBRATE CALIB.json ID_TEST.npy VIDEO.npy [WORK_DIR]

CALIBRATE is the `oodmon-calibrate` binary; the .npy files are embeddings from its
`embed-model` (the video's frames in file order, e.g. the study's `vtest-frames` folder:
`embed-model --model ENC.onnx --data folder:DIR --split train --out VIDEO.npy`). The scores
come from `oodmon-calibrate score`, so they are the product's own.
"""

import collections
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def scores(calibrate, calib, embeddings, out):
    subprocess.run(
        [calibrate, "score", "--calib", calib, "--embeddings", embeddings, "--out", out],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    return (
        np.array([float(r["score"]) for r in rows]),
        np.array([r["ood"] == "1" for r in rows]),
        np.array([int(r["nearest_cluster"]) for r in rows]),
    )


def per_frame_auroc(id_scores, frame_scores):
    """Share of ID scores below each frame's score, ties counting one half."""
    id_sorted = np.sort(id_scores)
    below = np.searchsorted(id_sorted, frame_scores, side="left")
    not_above = np.searchsorted(id_sorted, frame_scores, side="right")
    return (below + 0.5 * (not_above - below)) / len(id_sorted)


def longest_run(mask):
    best = run = 0
    for m in mask:
        run = run + 1 if m else 0
        best = max(best, run)
    return best


def main(argv):
    if len(argv) not in (5, 6):
        sys.exit(__doc__)
    calibrate, calib, id_npy, video_npy = argv[1:5]
    work = Path(argv[5]) if len(argv) == 6 else Path(tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    id_scores, id_flagged, _ = scores(calibrate, calib, id_npy, str(work / "id.csv"))
    frame_scores, flagged, nearest = scores(calibrate, calib, video_npy, str(work / "video.csv"))
    auc = per_frame_auroc(id_scores, frame_scores)
    worst = int(np.argmin(auc))
    order = np.argsort(auc)[:5]
    print(f"ID test images: {len(id_scores)}, flagged {100 * id_flagged.mean():.2f}%")
    print(f"video frames: {len(frame_scores)}, flagged {100 * flagged.mean():.1f}%")
    print(f"AUROC, mean over frames (the video's AUROC): {100 * auc.mean():.2f}")
    print(f"AUROC of the worst frame: {100 * auc[worst]:.2f} (frame {worst})")
    print(
        "AUROC percentiles 1 / 5 / 10 over frames: "
        + " / ".join(f"{100 * np.percentile(auc, q):.2f}" for q in (1, 5, 10))
    )
    print("five worst frames: " + ", ".join(f"{i} ({100 * auc[i]:.2f})" for i in order))
    print(f"longest run of consecutive frames that pass: {longest_run(~flagged)}")
    with open(calib) as f:
        bundle = json.load(f)
    names = bundle["class_names"]
    cluster_class = bundle["model"]["cluster_class"]
    passed = collections.Counter(names[cluster_class[k]] for k in nearest[~flagged])
    print("frames that pass, by nearest class: "
          + (", ".join(f"{n} {k}" for n, k in passed.most_common()) or "none"))


if __name__ == "__main__":
    main(sys.argv)
