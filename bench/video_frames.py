"""Every frame of a video as a JPEG in an image-folder data set, so that the study can
embed a real camera stream like any other OOD set (`folder:OUT_DIR`).

Usage: video_frames.py VIDEO OUT_DIR

Writes OUT_DIR/<video name>/frame_NNNN.jpg (quality 95) for every frame OpenCV
decodes (`vtest.avi` is MS-MPEG4v3, which the edge's MJPEG reader does not read), and
OUT_DIR/frames.txt with the count. Needs opencv-python-headless.
"""
import sys
from pathlib import Path

import cv2


def main():
    video, out = Path(sys.argv[1]), Path(sys.argv[2])
    folder = out / video.stem
    folder.mkdir(parents=True, exist_ok=True)
    capture = cv2.VideoCapture(str(video))
    n = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        cv2.imwrite(str(folder / f"frame_{n:04d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        n += 1
    if n == 0:
        sys.exit(f"{video}: no frame decoded")
    (out / "frames.txt").write_text(f"{n}\n")
    print(f"{video}: {n} frames into {folder}")


if __name__ == "__main__":
    main()
