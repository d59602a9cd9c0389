"""Training throughput of oodmon's encoders written in PyTorch (Python), for the trainer
benchmark: the same architecture, loss (cross-entropy), optimiser (SGD, momentum 0.9,
weight decay 5e-4), batch and thread count as `oodmon-trainer bench`.

EfficientNet-Lite0 is `bench/finetune_torch.py`'s network (checked there against the Rust
one on the same weights), timed at `--input-size`.

Usage: train_reference.py --arch edge|resnet18|efficientnet-lite0 --batch B --steps N
    --threads T [--input-size S] [--channels-last] [--device cpu|cuda]

`--channels-last` stores the batch NHWC in memory (as `oodmon-trainer` does), which
PyTorch's convolutions then keep; without it the batch is PyTorch's default contiguous
NCHW.
Prints JSON: {"arch", "images_per_second", "median_step_seconds"}.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBn(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = ConvBn(cin, cout, 3, stride)
        self.b = ConvBn(cout, cout, 3, 1)
        self.shortcut = ConvBn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = self.b(F.relu(self.a(x)))
        s = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(y + s)


class Encoder(nn.Module):
    def __init__(self, arch, width=1.0, embed_dim=128):
        super().__init__()
        if arch == "resnet18":
            stem, stages = 64, [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
        else:
            w = lambda c: max(4, round(c * width))
            stem, stages = w(16), [(w(16), 1, 1), (w(32), 1, 2), (w(64), 1, 2), (w(128), 1, 2)]
        self.stem = ConvBn(3, stem, 3, 1)
        blocks, cin = [], stem
        for cout, n, stride in stages:
            for i in range(n):
                blocks.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, embed_dim) if arch == "edge" else None
        self.dim = embed_dim if arch == "edge" else cin

    def forward(self, x):
        y = self.blocks(F.relu(self.stem(x)))
        y = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return self.fc(y) if self.fc is not None else y


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="edge")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    if a.arch == "efficientnet-lite0":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from finetune_torch import Net

        model = Net(10).to(dev)
    else:
        enc = Encoder(a.arch)
        model = nn.Sequential(enc, nn.Linear(enc.dim, 10)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch, 3, a.input_size, a.input_size, device=dev)
    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    model.train()
    times = []
    for step in range(a.steps + 3):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        loss.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= 3:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(json.dumps({"arch": a.arch, "images_per_second": a.batch / med, "median_step_seconds": med}))


if __name__ == "__main__":
    main()
