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
with the closed-set accuracy on the known classes.
"""
import json
import struct
import sys
from pathlib import Path
import numpy as np
from sklearn.metrics import roc_auc_score

root, model = Path(sys.argv[1]), sys.argv[2]
seeds = [int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else "0,1,2,3,4").split(",")]

def tensors(p):
    """The classifier's tensors (`head.*`) of a safetensors file."""
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k.startswith("head."):
            s, e = v["data_offsets"]
            out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=np.float32).reshape(v["shape"])
    return out

def fpr95(id_s, ood_s):
    """The OOD share accepted at the ID scores' 95th percentile (higher = more OOD)."""
    t = np.quantile(id_s, 0.95)
    return (ood_s <= t).mean()

res = {}
for seed in seeds:
    run = root / "runs" / f"open-{model}-s{seed}"
    known = json.loads((run / "config.json").read_text())["classes"]
    t = tensors(run / "model.safetensors")
    W, b = t["head.0.weight"].astype(np.float64), t["head.0.bias"].astype(np.float64)
    emb = root / "embeddings" / f"open-{model}-s{seed}-int8"
    x = np.load(emb / "test.npy").astype(np.float64)
    y = np.load(emb / "test_labels.npy")
    logits = x @ W.T + b
    is_known = np.isin(y, known)
    # closed-set accuracy on the known classes
    remap = {c: i for i, c in enumerate(known)}
    acc = (logits[is_known].argmax(1) == np.array([remap[c] for c in y[is_known]])).mean()
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
print(f"closed-set accuracy on the known classes: {a.mean():.2f} +- {a.std():.2f}")
print("| score | AUROC mean +- std | FPR@95TPR mean +- std | AUROC per split |")
print("|---|---|---|---|")
for name, v in res.items():
    a = 100 * np.array(v)
    print(f"| {name} | {a[:, 0].mean():.2f} +- {a[:, 0].std():.2f} | "
          f"{a[:, 1].mean():.2f} +- {a[:, 1].std():.2f} | "
          f"{', '.join(f'{x:.2f}' for x in a[:, 0])} |")
