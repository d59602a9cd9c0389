#!/usr/bin/env python3
"""Splits a camera's recording into the two folders of a camera-fitted guard study:
OUT/fit (train split: the frames the camera guards are fitted on) and OUT/eval (test split:
later frames, held out), each OUT/X/SPLIT/street/NNNNN.png, resized with OpenCV's area
filter and written losslessly (no JPEG on top of the video's own compression).

Usage: video_split.py VIDEO OUT [--width 384] [--fit-until 400] [--fit-step 2]
                                [--eval-from 440] [--eval-step 3] [--interleave N]

Frames [0, fit-until) every fit-step go to fit; frames from eval-from every eval-step go
to eval; the gap keeps neighbouring, near-identical frames out of both (bounds from the
recording's first part, judged on a later part). With --interleave N instead, frames
0, N, 2N, ... go to fit and N/2, N + N/2, ... to eval: both span the whole recording (its
range of conditions), at the price of neighbours in both sets. Needs opencv-python.
"""
import argparse
import os

import cv2


def main():
    p = argparse.ArgumentParser()
    p.add_argument("video")
    p.add_argument("out")
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--fit-until", type=int, default=400)
    p.add_argument("--fit-step", type=int, default=2)
    p.add_argument("--eval-from", type=int, default=440)
    p.add_argument("--eval-step", type=int, default=3)
    p.add_argument("--interleave", type=int, default=0)
    a = p.parse_args()
    if a.interleave == 1 or a.interleave < 0:
        raise SystemExit("--interleave needs N >= 2")
    if not a.interleave and a.eval_from < a.fit_until:
        raise SystemExit("--eval-from must not be before --fit-until: the sets would overlap")
    for d in ("fit/train/street", "fit/test", "eval/test/street", "eval/train"):
        os.makedirs(os.path.join(a.out, d), exist_ok=True)
    video = cv2.VideoCapture(a.video)
    if not video.isOpened():
        raise SystemExit(f"cannot open {a.video}")
    i = fit = held = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        h, w = frame.shape[:2]
        size = (a.width, round(h * a.width / w))
        if a.interleave:
            to_fit, to_eval = i % a.interleave == 0, i % a.interleave == a.interleave // 2
        else:
            to_fit = i < a.fit_until and i % a.fit_step == 0
            to_eval = i >= a.eval_from and (i - a.eval_from) % a.eval_step == 0
        if to_fit:
            name, fit = f"{a.out}/fit/train/street/{i:05d}.png", fit + 1
        elif to_eval:
            name, held = f"{a.out}/eval/test/street/{i:05d}.png", held + 1
        else:
            i += 1
            continue
        cv2.imwrite(name, cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
        i += 1
    if fit == 0 or held == 0:
        raise SystemExit(f"{i} frames: {fit} to fit on, {held} held out; adjust the split")
    print(f"{i} frames: {fit} to fit the guards on, {held} held out")


if __name__ == "__main__":
    main()
