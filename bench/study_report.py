"""Assembles the study's tables for EVALUATION.md from `cargo xtask study` output.

Usage: study_report.py STUDY_DIR

For each loss x variant (float libtorch, int8 tract) it reads `grid/LOSS-VARIANT/grid.csv`
(every clustering x metric x normalisation x threshold rule, per OOD set) and the
embeddings (for the nearest-class-centroid ID accuracy, and a cross-entropy run's own
classifier on the same test images), and prints Markdown: one row per
loss/variant with the default combination (class centroids, cosine, global threshold),
the best combination per OOD set, and the published references for context.
"""
import csv
import sys
from pathlib import Path

import numpy as np

from run_head import classifier

DEFAULT = ("class", "cosine", "false", "global")
REFERENCES = [
    # OpenOOD v1.5 (Zhang et al. 2023), CIFAR-10, ResNet-18 trained 100 epochs with CE
    ("k-NN (OpenOOD v1.5, ResNet-18, 100 epochs CE)", 90.64, 92.96),
    ("MSP (OpenOOD v1.5, ResNet-18, 100 epochs CE)", 88.03, 90.73),
    ("Mahalanobis (OpenOOD v1.5, ResNet-18, 100 epochs CE)", 84.20, 89.72),
]


def accuracy(emb_dir):
    train = np.load(emb_dir / "train.npy")
    labels = np.load(emb_dir / "train_labels.npy")
    test = np.load(emb_dir / "test.npy")
    test_labels = np.load(emb_dir / "test_labels.npy")
    norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    classes = np.unique(labels)
    centroids = np.stack([train[labels == c].mean(0) for c in classes])
    pred = classes[np.argmax(norm(test) @ norm(centroids).T, axis=1)]
    return 100.0 * np.mean(pred == test_labels)


def run_dir(root, grid_name):
    """The run a grid's embeddings came from (None for the truncated backbone, whose
    embedding is not the classifier's input)."""
    loss = grid_name.rsplit("-", 1)[0]
    if loss.endswith("-blocks"):
        return None
    return root / "runs" / (loss if loss.startswith("lite0-") else f"edge-{loss}")


def classifier_accuracy(root, grid_name):
    """The run's own classifier (cross-entropy runs only: its input is the embedding) on
    the same test embeddings as the nearest-centroid accuracy; None for projection heads
    (SupCon, SimCLR), frozen imports (ImageNet's head), the truncated backbone and runs not
    kept."""
    run = run_dir(root, grid_name)
    if run is None or not (run / "model.safetensors").exists():
        return None
    head = classifier(run)
    emb = root / "embeddings" / grid_name
    x = np.load(emb / "test.npy").astype(np.float64)
    classes = len(np.unique(np.load(emb / "train_labels.npy")))
    # a frozen import keeps ImageNet's 1000-class head: not a classifier of these classes
    if head is None or head[0].shape != (classes, x.shape[1]):
        return None
    y = np.load(emb / "test_labels.npy")
    return 100.0 * np.mean((x @ head[0].T + head[1]).argmax(1) == y)


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def pct(v):
    return f"{100 * float(v):.2f}"


def main():
    root = Path(sys.argv[1])
    grids = sorted(p for p in (root / "grid").iterdir() if (p / "grid.csv").exists())
    ood_sets = []
    table = []
    best = []
    overall = []
    for g in grids:
        loss, variant = g.name.rsplit("-", 1)
        data = rows(g / "grid.csv")
        sets = [s for s in dict.fromkeys(r["ood_set"] for r in data)]
        ood_sets = ood_sets or sets
        acc = accuracy(root / "embeddings" / g.name)
        clf = classifier_accuracy(root, g.name)
        default = {
            r["ood_set"]: r
            for r in data
            if (r["clusters"], r["metric"], r["normalize"], r["threshold"]) == DEFAULT
        }
        table.append((loss, variant, acc, clf, default))
        for s in sets:
            top = max((r for r in data if r["ood_set"] == s), key=lambda r: float(r["auroc"]))
            best.append((loss, variant, s, top))
        combos = {}
        for r in data:
            key = (r["clusters"], r["metric"], r["normalize"], r["threshold"])
            combos.setdefault(key, {})[r["ood_set"]] = r
        key, per_set = max(
            ((k, v) for k, v in combos.items() if len(v) == len(sets)),
            key=lambda kv: sum(float(r["auroc"]) for r in kv[1].values()) / len(sets),
        )
        overall.append((loss, variant, acc, key, per_set))
    print("### Default combination (class centroids, cosine, one global threshold at 95% TPR)\n")
    head = "| loss | model | ID accuracy (nearest centroid) | the classifier's, same images |"
    sep = "|---|---|---|---|"
    for s in ood_sets:
        head += f" {s} AUROC | {s} AUPR-In | {s} AUPR-Out | {s} FPR@95TPR |"
        sep += "---|---|---|---|"
    head += " ID false-alarm rate (target 5%) |"
    sep += "---|"
    print(head)
    print(sep)
    for loss, variant, acc, clf, default in table:
        line = f"| {loss} | {variant} | {acc:.2f}% | {'-' if clf is None else f'{clf:.2f}%'} |"
        for s in ood_sets:
            r = default.get(s)
            line += (
                f" {pct(r['auroc'])} | {pct(r['aupr_in'])} | {pct(r['aupr_out'])} | {pct(r['fpr_at_95_tpr'])} |"
                if r
                else " - | - | - | - |"
            )
        far = next(iter(default.values()), None)
        line += f" {pct(far['id_false_alarm'])}% |" if far else " - |"
        print(line)
    print("\n### Best combination per OOD set (by AUROC)\n")
    print("| loss | model | OOD set | clusters | metric | normalised | threshold | AUROC | AUPR-In | AUPR-Out | FPR@95TPR | ID false-alarm rate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for loss, variant, s, r in best:
        print(
            f"| {loss} | {variant} | {s} | {r['clusters']} | {r['metric']} | {r['normalize']} | {r['threshold']} | "
            f"{pct(r['auroc'])} | {pct(r['aupr_in'])} | {pct(r['aupr_out'])} | {pct(r['fpr_at_95_tpr'])} | {pct(r['id_false_alarm'])}% |"
        )
    print("\n### Best combination on average over the OOD sets (candidate default)\n")
    head = "| loss | model | ID accuracy | clusters | metric | normalised | threshold | mean AUROC |"
    sep = "|---|---|---|---|---|---|---|---|"
    for s in ood_sets:
        head += f" {s} AUROC | {s} FPR@95TPR | {s} flagged at the rule |"
        sep += "---|---|---|"
    print(head + " ID false-alarm rate |")
    print(sep + "---|")
    for loss, variant, acc, key, per_set in overall:
        mean = sum(float(r["auroc"]) for r in per_set.values()) / len(per_set)
        line = f"| {loss} | {variant} | {acc:.2f}% | {key[0]} | {key[1]} | {key[2]} | {key[3]} | {100 * mean:.2f} |"
        for s in ood_sets:
            line += f" {pct(per_set[s]['auroc'])} | {pct(per_set[s]['fpr_at_95_tpr'])} | {pct(per_set[s]['ood_detection'])}% |"
        print(line + f" {pct(next(iter(per_set.values()))['id_false_alarm'])}% |")
    # candidates for the edge's default: each int8 model's best combination on average
    # over the OOD sets, best first; `cargo xtask study` keeps the first whose bundle
    # reproduces the demo scenario (`oodmon-edge demo --bundle`)
    int8 = sorted(
        (o for o in overall if o[1] == "int8"),
        key=lambda o: -sum(float(r["auroc"]) for r in o[4].values()),
    )
    blocks = []
    for loss, _, acc, key, per_set in int8:
        clusters, metric, normalize, threshold = key
        args = ["--clusters", clusters, "--metric", metric]
        if normalize == "true":
            args.append("--normalize")
        if threshold == "per-cluster":
            args.append("--per-cluster")
        elif threshold == "conformal":
            args += ["--alpha", "0.05"]
        blocks.append(loss + "\n" + "\n".join(args) + "\n")
    (root / "candidates.args").unlink(missing_ok=True)
    if blocks:
        (root / "candidates.args").write_text("\n".join(blocks))
        print(
            "\nCandidates for the default (best int8 on average first; the study keeps the "
            "first whose bundle reproduces the demo scenario): "
            + "; ".join(
                f"{loss}, {k[0]}, {k[1]}, normalised {k[2]}, {k[3]} threshold"
                for loss, _, _, k, _ in int8
            )
            + "."
        )
    print("\n### Published references (not measured here)\n")
    print("| method | near-OOD AUROC | far-OOD AUROC |")
    print("|---|---|---|")
    for name, near, far in REFERENCES:
        print(f"| {name} | {near:.2f} | {far:.2f} |")


if __name__ == "__main__":
    main()
