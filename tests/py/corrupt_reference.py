"""CIFAR-10-C's corruptions as published (make_cifar_c.py: NumPy, SciPy, Pillow; motion
blur as the `imagecorruptions` package rewrote ImageMagick's in NumPy), for the
deterministic kinds, and the statistics of the random ones, against oodmon's images.

Usage: corrupt_reference.py DIR WIDTH HEIGHT

DIR holds `input.rgb` (WIDTH x HEIGHT RGB bytes), `KIND-SEVERITY.rgb`, oodmon's output for
each case, and `motion_angle.txt`, the angle oodmon's motion blur drew. Prints one JSON
object: per case, the mean and max absolute difference in levels (deterministic kinds, and
JPEG against Pillow's encoder at the same quality), or a measured statistic against the
expected one and its allowed range (noise, fog's plasma, the occlusion patch).
"""
import io
import json
import math
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


def motion_blur(x, s, scale, angle):
    """imagecorruptions' `_motion_blur` (ImageMagick's kernel), CIFAR-10-C's parameters."""
    radius, sigma = [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)][s - 1]
    radius, sigma = radius * scale, sigma * scale
    width = 2 * math.ceil(radius) + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    h, w = x.shape[:2]
    out = np.zeros_like(x)
    for i in range(width):
        dy = -math.ceil(i * math.sin(math.radians(angle)) - 0.5)
        dx = -math.ceil(i * math.cos(math.radians(angle)) - 0.5)
        if abs(dy) >= h or abs(dx) >= w:
            break
        # imagecorruptions' `shift`: a roll whose wrapped part repeats the edge
        ys = np.clip(np.arange(h) - dy, 0, h - 1)
        xs = np.clip(np.arange(w) - dx, 0, w - 1)
        out += k[i] * x[ys][:, xs]
    return out


def plasma_fractal(mapsize, decay, rng):
    """make_cifar_c.py's plasma_fractal, the random source made explicit."""
    m = np.empty((mapsize, mapsize))
    m[0, 0] = 0
    step, wibble = mapsize, 100.0

    def wibbledmean(a):
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        cul = m[0:mapsize:step, 0:mapsize:step]
        sq = cul + np.roll(cul, -1, 0)
        sq += np.roll(sq, -1, 1)
        m[step // 2:mapsize:step, step // 2:mapsize:step] = wibbledmean(sq)
        dr = m[step // 2:mapsize:step, step // 2:mapsize:step]
        ul = m[0:mapsize:step, 0:mapsize:step]
        m[0:mapsize:step, step // 2:mapsize:step] = wibbledmean(dr + np.roll(dr, 1, 0) + ul + np.roll(ul, -1, 1))
        m[step // 2:mapsize:step, 0:mapsize:step] = wibbledmean(dr + np.roll(dr, 1, 1) + ul + np.roll(ul, -1, 0))
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


def roughness(p):
    """Mean step between neighbours over the spread: how much of the plasma is fine detail."""
    return (np.abs(np.diff(p, axis=0)).mean() + np.abs(np.diff(p, axis=1)).mean()) / max(p.std(), 1e-9)


def fog_check(x, ours, s):
    """Recovers the plasma from `(x + a p) max / (max + a)` and compares its roughness with
    the published generator's over many draws; the plasma must be one plane for all three
    channels."""
    a, decay = [(.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75)][s - 1]
    mx = x.max()
    p = (ours / 255.0 * (mx + a) / mx - x) / a
    ok = (ours > 0) & (ours < 255)
    spread = float(np.where(ok.all(-1), p.max(-1) - p.min(-1), 0).max())
    plane = p.mean(-1)
    h, w = plane.shape
    side = max(32, 1 << (max(h, w) - 1).bit_length())
    rng = np.random.default_rng(1)
    draws = [roughness(plasma_fractal(side, decay, rng)[:h, :w]) for _ in range(400)]
    lo, hi = np.quantile(draws, [0.005, 0.995])
    # bytes round the recovered plasma by 0.5 / 255 (max + a) / (max a)
    return {"measured": float(roughness(plane)), "low": float(lo), "high": float(hi),
            "channel_spread": spread, "spread_limit": 1.5 / 255 * (mx + a) / (mx * a)}


def occlusion_check(raw, ours, s):
    """One rectangle of the published share (side sqrt(share) of each dimension, rounded),
    filled with (0.08, 0.07, 0.06); every other pixel unchanged."""
    share = [0.1, 0.2, 0.3, 0.45, 0.6][s - 1]
    h, w = raw.shape[:2]
    fill = np.round(np.array([0.08, 0.07, 0.06]) * 255)
    changed = np.any(ours != raw, -1)
    ys, xs = np.nonzero(changed)
    want = (round(h * math.sqrt(share)), round(w * math.sqrt(share)))
    if len(ys) == 0:
        return {"measured": 0.0, "low": 1.0, "high": 1.0}
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = ours[y0:y1, x0:x1]
    inside = np.all(box == fill, -1).mean()
    outside = changed.sum() - changed[y0:y1, x0:x1].sum()
    # the patch may equal the input at a few pixels, so its box can only shrink
    fits = (y1 - y0) <= want[0] and (x1 - x0) <= want[1] and (y1 - y0) >= want[0] - 1 and (x1 - x0) >= want[1] - 1
    return {"measured": float(inside if fits and outside == 0 else 0.0), "low": 0.99, "high": 1.0}


def main():
    d, w, h = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    raw = np.frombuffer((d / "input.rgb").read_bytes(), np.uint8).reshape(h, w, 3)
    x = raw / 255.0
    scale = min(w, h) / 32
    angle = float((d / "motion_angle.txt").read_text())
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
        elif kind == "motion_blur":
            ref = motion_blur(x, s, scale, angle)
        elif kind == "jpeg":
            q = [80, 65, 58, 50, 40][s - 1]
            buf = io.BytesIO()
            Image.fromarray(raw).save(buf, "JPEG", quality=q)
            pil = np.asarray(Image.open(buf).convert("RGB")).astype(float)
            # different encoders and decoders: compare the loss, and the pictures
            diff = np.abs(pil - ours)
            results[f.stem] = {"mean": float(diff.mean()), "max": float(diff.max()),
                               "loss": float(np.abs(ours - raw).mean()),
                               "reference_loss": float(np.abs(pil - raw).mean())}
            continue
        elif kind == "fog":
            results[f.stem] = fog_check(x, ours, s)
            continue
        elif kind == "occlusion":
            results[f.stem] = occlusion_check(raw, ours, s)
            continue
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
