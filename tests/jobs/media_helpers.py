"""Tiny person videos for the jobs tests, made from the official fixture frames (../shared via `fixture_cases`)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipelines.media.encode import VideoWriter
from pipelines.media.video import read_frames

# (case, folder) of the fixture frame folders that show one person
CLIPS = {
    "s1": ("case-1", "source_images"),
    "s2": ("case-6", "source_images"),
    "s3": ("case-1", "target_images"),
    "m1": ("case-6", "target_images"),
    "m2": ("case-1", "target_images"),
}


def write_clip(fixture_cases: Path, name: str, path: Path, frames: int = 8, side: int = 256, fps: int = 8) -> Path:
    """Encode the first ``frames`` fixture frames of clip ``name`` at ``side``² as an H.264 MP4."""
    case, folder = CLIPS[name]
    src = read_frames(str(fixture_cases / case / folder), range(frames))
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(str(path), fps=fps, preset="ultrafast", crf=23) as w:
        for f in src:
            w.write(np.ascontiguousarray(cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA)))
    return path


# request parameters that keep one request to one tiny window
TINY_EDIT = {"steps": 2, "window": 8, "overlap": 0, "size": 64}
