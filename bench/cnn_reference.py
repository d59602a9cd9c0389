"""The plain-CNN reference of issue 15 in PyTorch, to compare the from-scratch edge encoder
against on the same data and cores: six 3x3 convolutions (widths 32-32-64-64-128-128, batch
norm, ReLU, 2x2 max-pooling after each pair; 0.29 M parameters), the embedding being the
128 global-average-pooled ReLU features, cross-entropy with a linear classifier on top.
Training as oodmon-trainer's edge runs: SGD (momentum 0.9, weight decay 5e-4, lr 0.1,
batch 128), one linear warm-up epoch then cosine, random crop (4 px padding) and flips.

Scores as the study's default: class centroids of the training embeddings, cosine distance.

Usage: cnn_reference.py CIFAR10_BINS_DIR MNIST_DIR DTD10_BIN [--epochs 5] [--threads 2]
Prints JSON: test accuracy, and AUROC / FPR@95TPR for MNIST and DTD10, and seconds.
"""
import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32).reshape(1, 3, 1, 1)


def cifar_bin(path):
    raw = np.fromfile(path, np.uint8).reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].astype(np.int64)


def mnist(dirname):
    with gzip.open(Path(dirname) / "t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    t = torch.from_numpy(x.astype(np.float32))
    t = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)
    return t.clamp(0, 255).round().repeat(1, 3, 1, 1).numpy().astype(np.uint8)


def normalise(x):
    return torch.from_numpy((x.astype(np.float32) / 255.0 - MEAN) / STD)


class Net(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        widths = [32, 32, 64, 64, 128, 128]
        layers, cin = [], 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            if i % 2 == 1 and i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def embed(self, x):
        return self.features(x).mean((2, 3))

    def forward(self, x):
        return self.fc(self.embed(x))


def augment(x, rng):
    n = x.shape[0]
    padded = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)))
    out = np.empty_like(x)
    dx, dy = rng.integers(0, 9, n), rng.integers(0, 9, n)
    flip = rng.random(n) < 0.5
    for i in range(n):
        c = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        out[i] = c[:, :, ::-1] if flip[i] else c
    return out


def embed(net, x):
    net.eval()
    with torch.no_grad():
        return torch.cat([net.embed(normalise(x[i:i + 500])) for i in range(0, len(x), 500)]).numpy()


def fpr95(id_scores, ood_scores):
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    fpr, tpr, _ = roc_curve(1 - y, -np.r_[id_scores, ood_scores])
    return float(fpr[np.searchsorted(tpr, 0.95)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cifar")
    ap.add_argument("mnist")
    ap.add_argument("dtd10")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    parts = [cifar_bin(Path(a.cifar) / f"data_batch_{i}.bin") for i in range(1, 6)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    order = rng.permutation(len(x))
    train = order[5000:]  # 45,000 to train; 5,000 held out, as the trainer's split
    xt, yt = x[train], y[train]
    test_x, test_y = cifar_bin(Path(a.cifar) / "test_batch.bin")
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = len(xt) // 128
    total = steps_per_epoch * a.epochs

    def lr_at(step):
        if step < steps_per_epoch:
            return 0.1 * (step + 1) / steps_per_epoch
        p = (step - steps_per_epoch) / max(1, total - steps_per_epoch)
        return 0.05 * (1 + np.cos(np.pi * p)) * 1.0

    started = time.time()
    step = 0
    for _ in range(a.epochs):
        net.train()
        perm = rng.permutation(len(xt))
        for b in range(steps_per_epoch):
            idx = perm[b * 128:(b + 1) * 128]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = F.cross_entropy(net(normalise(augment(xt[idx], rng))), torch.from_numpy(yt[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    seconds = time.time() - started
    norm = lambda e: e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    train_e = embed(net, xt[:: 4])
    labels = yt[:: 4]
    centroids = norm(np.stack([train_e[labels == c].mean(0) for c in range(10)]))
    score = lambda e: 1.0 - (norm(e) @ centroids.T).max(1)
    test_e = embed(net, test_x)
    with torch.no_grad():
        logits = torch.cat([net(normalise(test_x[i:i + 500])) for i in range(0, len(test_x), 500)])
    out = {
        "epochs": a.epochs,
        "train_seconds": round(seconds, 1),
        "test_accuracy_classifier": float((logits.argmax(1).numpy() == test_y).mean()),
        "test_accuracy_nearest_centroid": float(((norm(test_e) @ centroids.T).argmax(1) == test_y).mean()),
    }
    id_scores = score(test_e)
    for name, ood in [("mnist", mnist(a.mnist)), ("dtd10", cifar_bin(a.dtd10)[0])]:
        s = score(embed(net, ood))
        y_true = np.r_[np.zeros(len(id_scores)), np.ones(len(s))]
        out[name] = {
            "auroc": round(100 * roc_auc_score(y_true, np.r_[id_scores, s]), 2),
            "fpr95": round(100 * fpr95(id_scores, s), 2),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
