"""The classifier's own scores on the open-set protocol's per-split runs, as a reference
for the clustering scores of `open_set.py --per-split`: maximum softmax probability,
maximum logit (Vaze et al. 2022: "a good closed-set classifier is all you need") and
energy (Liu et al. 2020).

Usage: open_set_logits.py STUDY_DIR MODEL [SEEDS]   (e.g. /var/tmp/study lite0-ce 0,1,2,3,4)

For each seed it applies the run's linear classifier (`head.0` in
runs/open-MODEL-sS/model.safetensors; CE runs only, whose embedding is the classifier's
input) to the int8 tract embeddings of the test set (embeddings/open-MODEL-sS-int8), takes
the known classes' test images as ID and the unknown classes' as OOD, and prints AUROC and
FPR@95TPR (the threshold at the ID scores' 95th percentile), mean +- std over the seeds,
with the closed-set accuracy on the known classes' test images: the classifier's, and the
nearest class centroid's (cosine, centroids of the run's training split) on the same images.
"""
import json
import sys
from pathlib import Path
import numpy as np
from sklearn.metrics import roc_auc_score

from run_head import classifier

root, model = Path(sys.argv[1]), sys.argv[2]
seeds = [int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else "0,1,2,3,4").split(",")]

def fpr95(id_s, ood_s):
    """The OOD share accepted at the ID scores' 95th percentile (higher = more OOD)."""
    t = np.quantile(id_s, 0.95)
    return (ood_s <= t).mean()

res = {}
for seed in seeds:
    run = root / "runs" / f"open-{model}-s{seed}"
    known = json.loads((run / "config.json").read_text())["classes"]
    head = classifier(run)
    if head is None:
        sys.exit(f"{run}: no classifier (cross-entropy runs only)")
    W, b = head
    emb = root / "embeddings" / f"open-{model}-s{seed}-int8"
    x = np.load(emb / "test.npy").astype(np.float64)
    y = np.load(emb / "test_labels.npy")
    logits = x @ W.T + b
    is_known = np.isin(y, known)
    # closed-set accuracy on the known classes
    remap = {c: i for i, c in enumerate(known)}
    truth = np.array([remap[c] for c in y[is_known]])
    acc = (logits[is_known].argmax(1) == truth).mean()
    # the nearest class centroid (cosine, centroids of the run's training split, whose
    # labels are the known classes' positions 0-5) on the same images
    train = np.load(emb / "train.npy").astype(np.float64)
    train_y = np.load(emb / "train_labels.npy")
    unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    centroids = unit(np.stack([train[train_y == i].mean(0) for i in range(len(known))]))
    nearest = (unit(x[is_known]) @ centroids.T).argmax(1)
    res.setdefault("nearest", []).append((nearest == truth).mean())
    m = logits.max(1, keepdims=True)
    p = np.exp(logits - m)
    p /= p.sum(1, keepdims=True)
    energy = -(m[:, 0] + np.log(np.exp(logits - m).sum(1)))
    scores = {"msp": -p.max(1), "max_logit": -logits.max(1), "energy": energy}
    for name, s in scores.items():
        a = roc_auc_score((~is_known).astype(int), s)
        f = fpr95(s[is_known], s[~is_known])
        res.setdefault(name, []).append((a, f))
    res.setdefault("accuracy", []).append(acc)
a = 100 * np.array(res.pop("accuracy"))
n = 100 * np.array(res.pop("nearest"))
print(f"closed-set accuracy on the known classes' test images: classifier {a.mean():.2f} +- "
      f"{a.std():.2f} ({', '.join(f'{v:.2f}' for v in a)}), nearest class centroid "
      f"{n.mean():.2f} +- {n.std():.2f} ({', '.join(f'{v:.2f}' for v in n)})")
print("| score | AUROC mean +- std | FPR@95TPR mean +- std | AUROC per split |")
print("|---|---|---|---|")
for name, v in res.items():
    a = 100 * np.array(v)
    print(f"| {name} | {a[:, 0].mean():.2f} +- {a[:, 0].std():.2f} | "
          f"{a[:, 1].mean():.2f} +- {a[:, 1].std():.2f} | "
          f"{', '.join(f'{x:.2f}' for x in a[:, 0])} |")
