"""Checks an imported ImageNet backbone against the reference port on the published
weights: `oodmon-trainer import-pretrained` then `classify` on natural images, and the
reference EfficientNet-Lite0 (efficientnet-lite-pytorch 0.1.0) on the very same input
tensors. Prints, per image, both top-5 lists and the largest logit difference.

usage: python pretrained_check.py TRAINER WEIGHTS.pth WORKDIR IMAGE...
(`cargo xtask pretrained-check --weights WEIGHTS.pth IMAGE...` builds TRAINER and runs it)
"""
import os
import subprocess
import sys

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet

# the ImageNet classes these images should land in (index: name)
NAMES = {281: "tabby cat", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat",
         285: "Egyptian cat", 504: "coffee mug", 967: "espresso", 968: "cup"}


def main(trainer, weights, work, images):
    run = os.path.join(work, "run")
    subprocess.run([trainer, "import-pretrained", "--weights", weights, "--data",
                    "noise:uniform:10:1", "--input-size", "224", "--python", sys.executable,
                    "--out", run], check=True)
    model = EfficientNet.from_name("efficientnet-lite0", image_size=224)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    print("| image | oodmon-trainer (tch) top-5 | reference top-5 | max abs logit difference |")
    print("|---|---|---|---|")
    for image in images:
        prefix = os.path.join(work, os.path.basename(image))
        out = subprocess.run([trainer, "classify", "--run", run, "--image", image,
                              "--dump", prefix], check=True, capture_output=True, text=True)
        ours = [int(line.split()[0]) for line in out.stdout.splitlines() if line.strip()]
        x = torch.from_numpy(np.load(prefix + "-input.npy").reshape(1, 3, 224, 224))
        logits = np.load(prefix + "-logits.npy").reshape(-1)
        with torch.no_grad():
            ref = model(x).numpy().reshape(-1)
        theirs = list(np.argsort(-ref)[:5])
        label = lambda ids: ", ".join(f"{i} {NAMES.get(i, '')}".strip() for i in ids)
        print(f"| {os.path.basename(image)} | {label(ours)} | {label(theirs)} | "
              f"{np.abs(logits - ref).max():.2e} (logits up to {np.abs(ref).max():.1f}) |")


if __name__ == "__main__":
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
