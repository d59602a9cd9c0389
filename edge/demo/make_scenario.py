"""Builds the demo scenario: an MJPEG AVI of 320x240 camera-like frames made from
public-domain / CC0 images in the scikit-image wheel (see README.md beside this file).

Usage: make_scenario.py SKIMAGE_DATA_DIR OUT.avi

SKIMAGE_DATA_DIR is `skimage/data` from the scikit-image 0.26.0 wheel
(`pip download scikit-image==0.26.0 --no-deps`, then unzip). The scenario is six
segments: in-distribution (a cat, as in CIFAR-10's `cat` class), out-of-distribution
twice (a person, the astronaut Eileen Collins: CIFAR-10 has no person class; then ancient
coins photographed in grey against a grey background, like no CIFAR-10 class),
in-distribution again, then a degraded camera (the same cat while the light fades, as
when a vehicle enters a tunnel: the picture darkens over a few frames and stays dark), and
the cat in good light once more. Each segment moves a virtual camera slowly over
the picture so consecutive frames differ like a real stream.
"""
import io
import json
import struct
import sys

import numpy as np
from PIL import Image

W, H = 320, 240
FPS = 10
SEGMENT = 24
QUALITY = 80

# (image, label, crop box path: list of (cx, cy, half-width) in source pixels)
SEGMENTS = [
    ("chelsea.png", "in-distribution", ((230, 150, 150), (270, 150, 135))),
    ("astronaut.png", "out-of-distribution", ((256, 230, 230), (250, 190, 170))),
    ("coins.png", "out-of-distribution", ((192, 151, 190), (200, 151, 150))),
    ("chelsea.png", "in-distribution", ((270, 150, 135), (230, 150, 150))),
    ("chelsea.png", "camera-fault", ((230, 150, 150), (250, 150, 140))),
    ("chelsea.png", "in-distribution", ((250, 150, 140), (230, 150, 150))),
]
# the light of the degraded segment, frame by frame: a fade over six frames, then dark
FADE = [1.0, 0.6, 0.35, 0.2, 0.12, 0.08]
DARK = 0.06


def frames(data_dir):
    for name, label, ((x0, y0, r0), (x1, y1, r1)) in SEGMENTS:
        img = Image.open(f"{data_dir}/{name}").convert("RGB")
        for i in range(SEGMENT):
            t = i / (SEGMENT - 1)
            cx, cy, r = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, r0 + (r1 - r0) * t
            box = (cx - r, cy - r * H / W, cx + r, cy + r * H / W)
            frame = img.resize((W, H), Image.Resampling.BILINEAR, box=box)
            if label == "camera-fault":
                light = FADE[i] if i < len(FADE) else DARK
                frame = Image.eval(frame, lambda v, light=light: round(v * light))
            buf = io.BytesIO()
            frame.save(buf, format="JPEG", quality=QUALITY)
            yield buf.getvalue(), (label, name.rsplit(".", 1)[0])


def chunk(fourcc, payload):
    pad = b"\0" if len(payload) % 2 else b""
    return fourcc + struct.pack("<I", len(payload)) + payload + pad


def lst(kind, payload):
    return chunk(b"LIST", kind + payload)


def write_avi(path, jpegs):
    n = len(jpegs)
    biggest = max(len(j) for j in jpegs)
    avih = struct.pack(
        "<10I4I", 1_000_000 // FPS, biggest * FPS, 0, 0x10, n, 0, 1, biggest, W, H, 0, 0, 0, 0
    )
    strh = struct.pack(
        "<4s4sIHHIIIIIIIIhhhh", b"vids", b"MJPG", 0, 0, 0, 0, 1, FPS, 0, n, biggest,
        0xFFFFFFFF, 0, 0, 0, W, H,
    )
    strf = struct.pack("<IiiHH4sIiiII", 40, W, H, 1, 24, b"MJPG", W * H * 3, 0, 0, 0, 0)
    hdrl = lst(b"hdrl", chunk(b"avih", avih) + lst(b"strl", chunk(b"strh", strh) + chunk(b"strf", strf)))
    movi_chunks = [chunk(b"00dc", j) for j in jpegs]
    movi = lst(b"movi", b"".join(movi_chunks))
    index, offset = b"", 4
    for c, j in zip(movi_chunks, jpegs):
        index += b"00dc" + struct.pack("<III", 0x10, offset, len(j))
        offset += len(c)
    body = b"AVI " + hdrl + movi + chunk(b"idx1", index)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)


def main():
    data_dir, out = sys.argv[1:3]
    made = list(frames(data_dir))
    write_avi(out, [j for j, _ in made])
    segments = []
    for i, (_, (lab, scene)) in enumerate(made):
        if not segments or (segments[-1]["label"], segments[-1]["scene"]) != (lab, scene):
            segments.append({"label": lab, "scene": scene, "first": i, "last": i})
        segments[-1]["last"] = i
    meta = {"width": W, "height": H, "fps": FPS, "frames": len(made), "segments": segments}
    with open(out.rsplit(".", 1)[0] + ".json", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"wrote {out}: {len(made)} frames, {sum(len(j) for j, _ in made)} bytes of JPEG")


if __name__ == "__main__":
    main()
