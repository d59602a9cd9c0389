"""The PyTorch port of the fine-tune (bench/finetune_torch.py) on a Rust run, for the Rust
side to compare: its stored training images and its network's embeddings.

Reads RUN/config.json and RUN/model.safetensors and the CIFAR-format FILE; writes into OUT
stored.npy (uint8 [n, h, w, 3]: the images at the input size as the port trains on them)
and embeddings.npy (float32 [n, 1280]: the port's network in eval mode, from each image
resized in float and normalised, as calibration and the edge compute inputs).

usage: python finetune_port.py RUN FILE OUT
"""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

here = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("ft", here / "../../bench/finetune_torch.py")
ft = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ft)


def main(run, file, out):
    cfg = json.loads((run / "config.json").read_text())
    pre = cfg["preprocessing"]
    size = pre["width"]
    recs = np.fromfile(file, np.uint8).reshape(-1, 3073)
    x32 = torch.from_numpy(recs[:, 1:].reshape(-1, 3, 32, 32).copy())
    stored = ft.stored_images(x32, size, "cpu").permute(0, 2, 3, 1).contiguous().numpy()
    np.save(out / "stored.npy", stored)
    net = ft.Net(cfg["model"]["head"]["classes"])
    missing, unexpected = net.load_state_dict(ft.read_safetensors(run / "model.safetensors"),
                                              strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"variables: missing {missing[:3]}, unexpected {unexpected[:3]}")
    net.eval()
    x = F.interpolate(x32.float(), size=(size, size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        e = net.encoder(ft.normalise(x, pre))
    np.save(out / "embeddings.npy", e.numpy().astype(np.float32))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
