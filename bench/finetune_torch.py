"""The study's EfficientNet-Lite0 cross-entropy fine-tune, in PyTorch: the recipe of
`oodmon-trainer train --arch efficientnet-lite0 --pretrained RUN --loss ce` (SGD with
momentum 0.9 and weight decay on every variable, the backbone at a fraction of the head's
learning rate, linear warm-up then cosine decay per step, random crop with zero padding
of an eighth of the side and a horizontal flip, batch norm momentum 0.01 and eps 1e-3,
TensorFlow "same" padding), written so that a GPU without a Rust toolchain (the `device`
machine) can train runs that the Rust side then exports, embeds and calibrates as its own.

Not bit-identical to the Rust trainer (its shuffling and augmentation draw from ChaCha8;
here from torch's generator), but the same images in the same splits, the same network
and variable names, the same optimiser and schedule, and the same stored input images
(byte for byte at 96 px; at sizes where a pixel can land half-way between two levels, such
as 48 or 64 px, those pixels may differ by one level: tests/tests/e2e/efficientnet.rs checks
96 and 48 px). The recipe's constants in `prepare` are the study's (`fine_tune` in
xtask/src/study.rs): change them together.

    # here: the run's configuration and splits (Rust: the trainer's own split code)
    python3 bench/finetune_torch.py prepare --pretrained STUDY/runs/lite0-frozen-96 \\
        --seed 3 --split-seed 0 --epochs 3 --out STUDY/runs/lite0-ce-96-s3-split0
    cargo run --release -p oodmon-data --example dump_split -- \\
        STUDY/runs/lite0-ce-96-s3-split0/config.json STUDY/runs/lite0-ce-96-s3-split0/split 16
    # there (or here, slowly): the training
    python3 bench/finetune_torch.py train RUN --bins CIFAR10_BINS \\
        --pretrained-weights STUDY/runs/lite0-frozen-96/model.safetensors --device cuda
    # here: `cargo xtask study ... --tune-seeds 3 --tune-split-seed 0` finds the run finished
    # and exports, embeds and grids it as its own.

On the device machine, `bench/device_finetune.sh` trains every prepared run it is given
and `unpack` puts the results back into the study's runs here.

`train` writes RUN/model.safetensors, RUN/optimizer.safetensors (momentum buffers under
the same names as the Rust optimiser's), RUN/state.json and RUN/log.jsonl as the Rust
trainer does (the device script brings back the weights, log and state, not the momentum
buffers, which would halve the runs per call: an unpacked run is finished, not resumable), and first checks its own 32 -> SIZE resize against RUN/split/check_images.npy
(the Rust trainer's stored images; `--check-only` stops there).
"""
import argparse
import json
import math
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# EfficientNet-Lite0's stages: repeats, kernel, stride, expansion, input, output
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


class SameConv(nn.Conv2d):
    """A convolution with TensorFlow "same" padding, the extra pixel after."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x):
        pads = []
        for size in (x.shape[-1], x.shape[-2]):
            k, s = self.kernel_size[0], self.stride[0]
            out = (size + s - 1) // s
            total = max((out - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


def bn(c):
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MbConv(nn.Module):
    def __init__(self, cin, cout, kernel, stride, expand):
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, hidden, 1)
            self._bn0 = bn(hidden)
        self.expand = expand != 1
        self._depthwise_conv = SameConv(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = bn(hidden)
        self._project_conv = SameConv(hidden, cout, 1)
        self._bn2 = bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class LiteEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2)
        self._bn0 = bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, _, cout in STAGES:
            for r in range(repeats):
                blocks.append(MbConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cin, 1280, 1)
        self._bn1 = bn(1280)

    def forward(self, x):
        y = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            y = b(y)
        y = F.relu6(self._bn1(self._conv_head(y)))
        return y.mean((2, 3))


class Net(nn.Module):
    """`encoder.*` and `head.0.*`: the Rust trainer's variable names."""

    def __init__(self, classes):
        super().__init__()
        self.encoder = LiteEncoder()
        self.head = nn.ModuleList([nn.Linear(1280, classes)])
        # tch's default for a linear layer's weight: Kaiming uniform for ReLU (bound
        # sqrt(6 / fan_in), 2.4 times PyTorch's default); the bias as PyTorch's
        nn.init.uniform_(self.head[0].weight, -math.sqrt(6 / 1280), math.sqrt(6 / 1280))

    def forward(self, x):
        return self.head[0](self.encoder(x))


def read_safetensors(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        if t["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {t['dtype']}, only F32 is read")
        a, b = t["data_offsets"]
        out[name] = torch.from_numpy(
            np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").copy()).reshape(t["shape"])
    return out


def write_safetensors(path, tensors):
    """Written beside, then renamed: a crash never leaves half a file."""
    header, blobs, at = {}, [], 0
    for name in sorted(tensors):
        data = tensors[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [at, at + len(data)]}
        blobs.append(data)
        at += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    tmp.replace(path)


def write_json(path, value):
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


def state_dict_rust(net):
    """The network's variables as the Rust trainer names them (no batch counters)."""
    return {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def cifar_train(bins):
    """CIFAR-10's 50,000 training images in the binary batches' order, NCHW uint8."""
    recs = [np.fromfile(Path(bins) / f"data_batch_{i}.bin", np.uint8).reshape(-1, 3073)
            for i in range(1, 6)]
    recs = np.concatenate(recs)
    return torch.from_numpy(recs[:, 1:].reshape(-1, 3, 32, 32).copy()), recs[:, 0].astype(np.int64)


def stored_images(x32, size, device, batch=2048):
    """32x32 -> size x size as the Rust trainer stores them: bilinear with half-pixel
    centres (an upscale: no antialiasing), rounded half up to bytes."""
    out = torch.empty((len(x32), 3, size, size), dtype=torch.uint8, device=device)
    for i in range(0, len(x32), batch):
        x = x32[i:i + batch].to(device, torch.float32)
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out[i:i + batch] = torch.floor(x + 0.5).clamp(0, 255).to(torch.uint8)
    return out


def normalise(x, spec):
    mean = torch.tensor(spec["mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"], device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def crop_flip(x, pad, gen):
    """Random crop after zero padding by `pad`, and a horizontal flip with p = 0.5, per
    image (on uint8 NCHW; zero is black, before normalisation, as in Rust)."""
    b, _, h, w = x.shape
    dev = x.device
    flip = torch.rand(b, generator=gen, device="cpu") < 0.5
    dx = torch.randint(-pad, pad + 1, (b,), generator=gen)
    dy = torch.randint(-pad, pad + 1, (b,), generator=gen)
    x = torch.where(flip.to(dev).view(b, 1, 1, 1), x.flip(3), x)
    p = F.pad(x, (pad, pad, pad, pad))
    iy = (torch.arange(h) + pad).view(1, h) + dy.view(b, 1)
    ix = (torch.arange(w) + pad).view(1, w) + dx.view(b, 1)
    bi = torch.arange(b).view(b, 1, 1)
    out = p.permute(0, 2, 3, 1)[bi.to(dev), iy.to(dev).view(b, h, 1), ix.to(dev).view(b, 1, w)]
    return out.permute(0, 3, 1, 2)


def learning_rate(cfg, epoch_f):
    warm = cfg["warmup_epochs"]
    if epoch_f < warm:
        return cfg["lr"] * (epoch_f + 1e-3) / warm
    t = (epoch_f - warm) / max(cfg["epochs"] - warm, 1e-9)
    return 0.5 * cfg["lr"] * (1 + math.cos(math.pi * min(t, 1.0)))


def prepare(a):
    """RUN/config.json: what `oodmon-trainer train` writes for the study's fine-tune."""
    frozen = json.loads((Path(a.pretrained) / "config.json").read_text())
    if frozen["model"]["arch"] != "efficientnet_lite0":
        sys.exit(f"{a.pretrained}: not an efficientnet_lite0 import")
    cfg = {
        "data": frozen["data"] if a.data is None else a.data,
        "model": {"arch": "efficientnet_lite0", "width": 1.0, "embed_dim": 0,
                  "head": {"kind": "classifier", "classes": len(a.classes or range(10))}},
        "loss": "ce", "epochs": a.epochs, "batch": 64, "lr": 0.05, "weight_decay": 5e-5,
        "momentum": 0.9, "warmup_epochs": 1, "temperature": 0.1, "val_fraction": 0.1,
        "seed": a.seed,
        "preprocessing": frozen["preprocessing"],
        "max_steps_per_epoch": a.max_steps,
        "pretrained": str(Path(a.pretrained).resolve()),
        "backbone_lr_scale": 0.3, "freeze_stages": 0,
    }
    if a.split_seed is not None and a.split_seed != a.seed:
        cfg["split_seed"] = a.split_seed
    if a.classes:
        cfg["classes"] = a.classes
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg)
    print(f"wrote {out / 'config.json'}; next: cargo run --release -p oodmon-data --example "
          f"dump_split -- {out / 'config.json'} {out / 'split'} 16")


def train(a):
    run = Path(a.run)
    cfg = json.loads((run / "config.json").read_text())
    spec = cfg["preprocessing"]
    size = spec["width"]
    if spec["height"] != size or spec.get("detail_size") not in (None, 32):
        sys.exit("square inputs from CIFAR's 32x32 images only")
    # what this port does not do: refuse rather than train another recipe quietly
    unsupported = {
        "loss": cfg["loss"] != "ce",
        "freeze_stages": cfg.get("freeze_stages", 0) != 0,
        "channel_order": spec.get("channel_order", "rgb") != "rgb",
        "layout": spec.get("layout", "nchw") != "nchw",
        "model.arch": cfg["model"]["arch"] != "efficientnet_lite0",
        "model.embed_dim": cfg["model"].get("embed_dim", 0) not in (0, 1280),
    }
    if any(unsupported.values()):
        sys.exit(f"{run}: this port trains the cross-entropy Lite0 fine-tune only; "
                 f"unsupported: {', '.join(k for k, bad in unsupported.items() if bad)}")
    device = torch.device(a.device)
    # float32 as the Rust trainer computes (no TF32 on GPUs that have it)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    split = run / "split"
    x32, _ = cifar_train(a.bins)
    rows = {p: np.load(split / f"{p}_rows.npy") for p in ("train", "val")}
    labels = {p: torch.from_numpy(np.load(split / f"{p}_labels.npy")) for p in ("train", "val")}
    check = np.load(split / "check_images.npy")
    mine = stored_images(x32[rows["train"][:len(check)]], size, "cpu").permute(0, 2, 3, 1).numpy()
    diff = np.abs(mine.astype(int) - check.astype(int))
    print(f"resize check against the Rust trainer's stored images: {len(check)} images, "
          f"{(diff > 0).sum()} of {diff.size} bytes differ, at most by {diff.max()}")
    # exact at 96 px (3x: no pixel lands on a half-way value); at 64 px (2x) half-way
    # values occur, and the Rust side's rounding of them follows its fused multiply-adds
    if diff.max() > 1:
        sys.exit("the resize does not match the Rust trainer's: stopping")
    if a.check_only:
        return
    # resized on the CPU, where the check above ran, then moved
    train_x = stored_images(x32[rows["train"]], size, "cpu").to(device)
    val_x = stored_images(x32[rows["val"]], size, "cpu").to(device)
    ytr, yval = labels["train"].to(device), labels["val"].to(device)
    classes = cfg["model"]["head"]["classes"]
    net = Net(classes).to(device)
    pre = read_safetensors(a.pretrained_weights)
    enc = {k[len("encoder."):]: v for k, v in pre.items() if k.startswith("encoder.")}
    missing, unexpected = net.encoder.load_state_dict(enc, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"pretrained weights: missing {missing[:3]}, unexpected {unexpected[:3]}")
    groups = [
        {"params": [p for n, p in net.named_parameters() if n.startswith("encoder.")],
         "scale": cfg["backbone_lr_scale"]},
        {"params": [p for n, p in net.named_parameters() if not n.startswith("encoder.")],
         "scale": 1.0},
    ]
    opt = torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])
    batch = min(cfg["batch"], len(train_x))
    cap = cfg.get("max_steps_per_epoch")
    steps = max(len(train_x) // batch if cap is None else min(len(train_x) // batch, cap), 1)
    pad = max(size // 8, 1)
    log = run / "log.jsonl"
    log.unlink(missing_ok=True)
    for epoch in range(cfg["epochs"]):
        started = time.time()
        net.train()
        order = torch.randperm(len(train_x), generator=gen).to(device)
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(steps):
            lr = learning_rate(cfg, epoch + step / steps)
            for g in opt.param_groups:
                g["lr"] = lr * g["scale"]
            idx = order[step * batch:(step + 1) * batch]
            x = normalise(crop_flip(train_x[idx], pad, gen), spec)
            y = ytr[idx]
            out = net(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            correct += (out.argmax(1) == y).sum().item()
            seen += len(idx)
        seconds = time.time() - started
        net.eval()
        right = 0
        with torch.no_grad():
            for i in range(0, len(val_x), 256):
                right += (net(normalise(val_x[i:i + 256], spec)).argmax(1)
                          == yval[i:i + 256]).sum().item()
        entry = {"epoch": epoch, "loss": loss_sum / steps, "accuracy": correct / seen,
                 "val_accuracy": right / max(len(val_x), 1),
                 "images_per_second": seen / max(seconds, 1e-9), "lr": lr, "seconds": seconds}
        write_safetensors(run / "model.safetensors", state_dict_rust(net))
        names = {id(p): n for n, p in net.named_parameters()}
        write_safetensors(run / "optimizer.safetensors", {
            names[id(p)]: s["momentum_buffer"] for p, s in opt.state.items()
            if "momentum_buffer" in s})
        write_json(run / "state.json", {"epoch": epoch + 1, "step": 0})
        with open(log, "a") as f:
            f.write(json.dumps(entry) + "\n")
        print(json.dumps(entry), flush=True)


def unpack(a):
    """Puts what `bench/device_finetune.sh` brought back into the study's runs: each
    NAME.safetensors as runs/NAME/model.safetensors, then its log and state (the state last:
    the study takes a run as trained by its state)."""
    import tarfile
    src, runs = Path(a.returned), Path(a.runs)
    with tarfile.open(src / "logs.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
        for weights in sorted(src.glob("*.safetensors")):
            name = weights.stem
            run = runs / name
            if not (run / "config.json").exists():
                sys.exit(f"{run}: no such prepared run")
            write_safetensors(run / "model.safetensors", read_safetensors(weights))
            for part in ("log.jsonl", "state.json"):
                data = tar.extractfile(members[f"{name}/{part}"]).read()
                tmp = run / f".{part}.tmp"
                tmp.write_bytes(data)
                tmp.replace(run / part)
            print(f"{run}: {json.loads((run / 'state.json').read_text())['epoch']} epochs")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("prepare")
    q.add_argument("--pretrained", required=True, help="the import's run (lite0-frozen-SIZE)")
    q.add_argument("--data", help="cifar10:BINS (default: the import's)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--split-seed", type=int)
    q.add_argument("--epochs", type=int, default=3)
    q.add_argument("--max-steps", type=int)
    q.add_argument("--classes", type=lambda v: [int(c) for c in v.split(",")])
    q.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("run")
    t.add_argument("--bins", required=True, help="CIFAR-10's binary batches")
    t.add_argument("--pretrained-weights", required=True)
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--check-only", action="store_true")
    u = sub.add_parser("unpack")
    u.add_argument("returned", help="the device call's files (OUT)")
    u.add_argument("runs", help="STUDY/runs, where the runs were prepared")
    a = p.parse_args()
    {"prepare": prepare, "train": train, "unpack": unpack}[a.cmd](a)


if __name__ == "__main__":
    main()
