"""The reference EfficientNet-Lite0 (efficientnet-lite-pytorch 0.1.0, the port the
pretrained weights were converted for) on random weights, for the Rust port to match.

Writes into DIR: model.pth (its state dict, in PyTorch's legacy non-zip format, as the
published checkpoint is), input.npy [2, 3, S, S], features.npy [2, 1280] (the head's
features, average-pooled) and logits.npy [2, 1000].

usage: python efficientnet_reference.py DIR SIZE
"""
import os
import sys

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet


def main(out, size):
    torch.manual_seed(20260512)
    model = EfficientNet.from_name("efficientnet-lite0", image_size=size)
    # running statistics that are not 0/1, so batch norm is really exercised
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    model.eval()
    x = torch.rand(2, 3, size, size) * 4.0 - 2.0
    with torch.no_grad():
        features = model.extract_features(x).mean(dim=(2, 3))
        logits = model(x)
    torch.save(model.state_dict(), os.path.join(out, "model.pth"),
               _use_new_zipfile_serialization=False)
    np.save(os.path.join(out, "input.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(out, "features.npy"), features.numpy().astype(np.float32))
    np.save(os.path.join(out, "logits.npy"), logits.numpy().astype(np.float32))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], int(sys.argv[2]))
