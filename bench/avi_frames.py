#!/usr/bin/env python3
"""Splits an MJPEG AVI into an image folder that `oodmon-calibrate` reads as
`folder:OUT` (test split): OUT/test/CLASS/NNNNN.jpg, the frames' own JPEG bytes, untouched
(and an empty OUT/train).

Usage: avi_frames.py VIDEO.avi OUT [--class NAME] [--segments SCENARIO.json LABEL]

With --segments, only the frames of the scenario's segments labelled LABEL are kept (the
demo's in-distribution frames, say). Standard library only.
"""
import json
import os
import struct
import sys


def jpeg_chunks(data):
    """The payloads of the `movi` list's video chunks (`..dc`), in order."""
    start = data.find(b"movi")
    if data[:4] != b"RIFF" or start < 0:
        raise SystemExit("not an AVI with a movi list")
    at, end = start + 4, len(data)
    while at + 8 <= end:
        fourcc, size = data[at:at + 4], struct.unpack("<I", data[at + 4:at + 8])[0]
        if fourcc == b"idx1":
            break
        if fourcc == b"LIST":
            at += 12
            continue
        payload = data[at + 8:at + 8 + size]
        if fourcc[2:] == b"dc" and payload[:2] == b"\xff\xd8":
            yield payload
        at += 8 + size + (size & 1)


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    video, out = argv[1], argv[2]
    name, keep = "frames", None
    rest = argv[3:]
    while rest:
        if rest[0] == "--class" and len(rest) >= 2:
            name, rest = rest[1], rest[2:]
        elif rest[0] == "--segments" and len(rest) >= 3:
            meta = json.load(open(rest[1]))
            keep = {i for s in meta["segments"] if s["label"] == rest[2]
                    for i in range(s["first"], s["last"] + 1)}
            rest = rest[3:]
        else:
            print(__doc__, file=sys.stderr)
            return 2
    folder = os.path.join(out, "test", name)
    os.makedirs(folder, exist_ok=True)
    # a folder data set has a test split only beside a train one (left empty here)
    os.makedirs(os.path.join(out, "train"), exist_ok=True)
    n = 0
    for i, jpeg in enumerate(jpeg_chunks(open(video, "rb").read())):
        if keep is None or i in keep:
            with open(os.path.join(folder, "%05d.jpg" % i), "wb") as f:
                f.write(jpeg)
            n += 1
    print("wrote %d frames to %s" % (n, folder))
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
