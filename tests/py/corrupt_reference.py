"""CIFAR-10-C's corruptions as published (make_cifar_c.py: NumPy, SciPy, Pillow), for the
deterministic kinds, and the statistics of the random ones, against oodmon's images.

Usage: corrupt_reference.py DIR WIDTH HEIGHT

DIR holds `input.rgb` (WIDTH x HEIGHT RGB bytes) and `KIND-SEVERITY.rgb`, oodmon's output
for each case. Prints one JSON object: per case, the mean and max absolute difference in
levels (deterministic kinds), or the measured statistic against the expected one (noise).
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import correlate, map_coordinates
from scipy.ndimage import zoom as scizoom


def rgb2hsv(x):  # scikit-image's formula
    v = x.max(-1)
    delta = x.ptp(-1) if hasattr(x, "ptp") else np.ptp(x, -1)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1), 0)
    safe = np.where(delta > 0, delta, 1)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    h = np.where(v == r, ((g - b) / safe) % 6, np.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    h = np.where(delta > 0, h, 0)
    return np.stack([h, s, v], -1)


def hsv2rgb(hsv):
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    hi = hi.astype(int) % 6
    out = np.choose(hi[..., None] * np.ones(3, int), [
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1)])
    return out


def disk(radius, alias_blur):
    if radius <= 8:
        L, k = np.arange(-8, 9), 3
    else:
        L, k = np.arange(-radius, radius + 1), 5
    X, Y = np.meshgrid(L, L)
    d = np.array((X ** 2 + Y ** 2) <= radius ** 2, dtype=np.float32)
    d /= d.sum()
    r = k // 2
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    return correlate(d, np.outer(g, g), mode="mirror")  # cv2.GaussianBlur, reflect-101


def defocus(x, s, scale):
    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s - 1]
    k = disk(radius * scale, alias * scale)
    return np.stack([correlate(x[..., c], k, mode="mirror") for c in range(3)], -1)


def clipped_zoom(img, z):
    h, w = img.shape[:2]
    ch, cw = int(np.ceil(h / z)), int(np.ceil(w / z))
    top, left = (h - ch) // 2, (w - cw) // 2
    img = scizoom(img[top:top + ch, left:left + cw], (z, z, 1), order=1)
    th, tw = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[th:th + h, tw:tw + w]


def zoom_blur(x, s):
    top = [1.06, 1.11, 1.16, 1.21, 1.26][s - 1]
    zs = np.arange(1, top - 1e-6, 0.01)
    out = np.zeros_like(x)
    for z in zs:
        out += clipped_zoom(x, z)
    return (x + out) / (len(zs) + 1)


def main():
    d, w, h = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    raw = np.frombuffer((d / "input.rgb").read_bytes(), np.uint8).reshape(h, w, 3)
    x = raw / 255.0
    scale = min(w, h) / 32
    results = {}
    for f in sorted(d.glob("*-*.rgb")):
        kind, s = f.stem.rsplit("-", 1)
        s = int(s)
        ours = np.frombuffer(f.read_bytes(), np.uint8).reshape(h, w, 3).astype(float)
        ref = None
        if kind == "defocus_blur":
            ref = defocus(x, s, scale)
        elif kind == "zoom_blur":
            ref = zoom_blur(x, s)
        elif kind == "contrast":
            c = [.75, .5, .4, .3, 0.15][s - 1]
            m = x.mean(axis=(0, 1), keepdims=True)
            ref = (x - m) * c + m
        elif kind == "brighten":
            c = [.05, .1, .15, .2, .3][s - 1]
            hsv = rgb2hsv(x)
            hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
            ref = hsv2rgb(hsv)
        elif kind == "darken":
            c = [0.7, 0.5, 0.35, 0.2, 0.1][s - 1]
            hsv = rgb2hsv(x)
            hsv[..., 2] *= c
            ref = hsv2rgb(hsv)
        elif kind == "saturate":
            c = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][s - 1]
            hsv = rgb2hsv(x)
            hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
            ref = hsv2rgb(hsv)
        elif kind == "pixelate":
            c = [0.95, 0.9, 0.85, 0.75, 0.65][s - 1]
            im = Image.fromarray(raw).resize((int(w * c), int(h * c)), Image.BOX)
            ref = np.asarray(im.resize((w, h), Image.BOX)) / 255.0
        if ref is not None:
            diff = np.abs(np.clip(ref, 0, 1) * 255 - ours)
            results[f.stem] = {"mean": float(diff.mean()), "max": float(diff.max())}
            continue
        delta = ours / 255.0 - x
        mid = (x > 0.15) & (x < 0.85)  # away from clipping
        if kind == "gaussian_noise":
            c = [0.04, 0.06, .08, .09, .10][s - 1]
            results[f.stem] = {"measured": float(delta[mid].std()), "expected": c}
        elif kind == "shot_noise":
            c = [500, 250, 100, 75, 50][s - 1]
            # Poisson(x c) / c has variance x / c
            z = delta[mid] / np.sqrt(x[mid] / c)
            results[f.stem] = {"measured": float(z.std()), "expected": 1.0}
        elif kind == "impulse_noise":
            c = [.01, .02, .03, .05, .07][s - 1]
            hit = (ours == 0) | (ours == 255)
            results[f.stem] = {"measured": float(hit[mid].mean()), "expected": c}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
