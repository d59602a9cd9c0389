"""Reference resize for oodmon's preprocessing: Pillow's antialiased BILINEAR on float
channels (mode "F", no rounding), with the centre crop expressed as Pillow's `box`.

Usage: preprocess_reference.py DIR. Reads DIR/src.npy (uint8 [H, W, 3]) and DIR/spec.json
(out width/height, policy), writes DIR/ref.npy (float32 [3, h, w], values 0..255).
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main():
    root = Path(sys.argv[1])
    src = np.load(root / "src.npy")
    spec = json.loads((root / "spec.json").read_text())
    h_src, w_src = src.shape[:2]
    w, h = spec["width"], spec["height"]
    if spec["resize"] == "stretch":
        box = (0, 0, w_src, h_src)
    else:
        s = max(w / w_src, h / h_src)
        x0 = (w_src * s - w) / 2 / s
        y0 = (h_src * s - h) / 2 / s
        box = (x0, y0, x0 + w / s, y0 + h / s)
    out = []
    for c in range(3):
        channel = Image.fromarray(src[:, :, c].astype(np.float32), mode="F")
        out.append(np.asarray(channel.resize((w, h), Image.Resampling.BILINEAR, box=box)))
    np.save(root / "ref.npy", np.stack(out).astype(np.float32))


if __name__ == "__main__":
    main()
