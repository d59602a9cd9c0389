"""A PyTorch state dict (.pth, legacy or zip format) to .npz under oodmon-trainer's
variable names, for `oodmon-trainer import-pretrained`.

EfficientNet-PyTorch naming (`_conv_stem.weight`, `_blocks.N._depthwise_conv.weight`, ...)
becomes `encoder.<name>`; the ImageNet classifier `_fc.*` becomes `head.0.*`; batch norm's
`num_batches_tracked` counters are dropped. Only tensors are read (`weights_only`): no code
from the file runs.

usage: python pth_to_npz.py SRC.pth DST.npz
"""
import sys

import numpy as np
import torch


def main(src, dst):
    state = torch.load(src, map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise SystemExit(f"{src}: {key} is not a tensor: not a state dict")
        if key.endswith("num_batches_tracked"):
            continue
        name = "head.0." + key[len("_fc."):] if key.startswith("_fc.") else "encoder." + key
        out[name] = value.detach().to(torch.float32).contiguous().numpy()
    if not out:
        raise SystemExit(f"{src}: no tensors")
    np.savez(dst, **out)
    print(f"{len(out)} tensors")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
