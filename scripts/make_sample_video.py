#!/usr/bin/env python3
"""Makes models/samples/scenes.mp4, the bundled video the demo and the default config play.

Each of the five sample scenes (handwritten digits on real photographs, see models/samples/README.md) is shown for
3 s at 10 fps with a slow diagonal pan, so that the detector sees moving objects. MPEG-4 part 2 (`mp4v`), which the
PyPI OpenCV's FFmpeg both writes and reads.

    .venv/bin/python scripts/make_sample_video.py [--out models/samples/scenes.mp4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FPS = 10.0
SECONDS_PER_SCENE = 3
SIZE = (320, 240)
PAN = (32, 24)


def main() -> None:
    """Writes the video."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "samples" / "scenes.mp4")
    args = parser.parse_args()
    scenes = [cv2.imread(str(p)) for p in sorted((ROOT / "models" / "samples").glob("scene_*.png"))]
    writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    if not writer.isOpened():
        raise SystemExit("this OpenCV cannot write mp4v video")
    frames = int(FPS * SECONDS_PER_SCENE)
    width, height = SIZE
    for image in scenes:
        big = cv2.resize(image, (width + PAN[0], height + PAN[1]), interpolation=cv2.INTER_AREA)
        for i in range(frames):
            x, y = round(i * PAN[0] / (frames - 1)), round(i * PAN[1] / (frames - 1))
            writer.write(np.ascontiguousarray(big[y : y + height, x : x + width]))
    writer.release()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(scenes) * frames} frames at {FPS:g} fps)")


if __name__ == "__main__":
    main()
