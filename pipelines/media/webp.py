"""Animated WebP, which FFmpeg's WebP decoder cannot play: read with Pillow (libwebp), frame timestamps in ms.

:func:`webp_facts` gives the probe its timestamps and size (a one-frame WebP is a still image, refused);
:func:`read_webp` decodes stored frames (Pillow composites each frame onto the canvas).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from pipelines.media.errors import InputError

MS = Fraction(1, 1000)  # the time base of WebP frame timestamps


def _open(path: str, label: str):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(label, f"not a readable WebP image: {exc}") from None


def webp_facts(path: str, max_frames: int) -> tuple[list[int], int, tuple[int, int]]:
    """(frame timestamps in ms, the last frame's duration, (width, height)) of an animated WebP."""
    with _open(path, path) as im:
        n = int(getattr(im, "n_frames", 1))
        if n <= 1:
            raise InputError(path, "is a still image, not a video (give a folder of frame_{i} images for frames)")
        if n > max_frames:
            raise InputError(path, f"holds more than {max_frames} frames")
        times, last = [], 0
        for i in range(n):
            im.seek(i)
            im.load()
            times.append(int(im.info.get("timestamp", i * 100)))
            last = int(im.info.get("duration") or 0)
        return times, last, im.size


def read_webp(path: str, wanted: list[int]) -> dict[int, np.ndarray]:
    out = {}
    with _open(path, path) as im:
        for i in wanted:
            im.seek(i)
            out[i] = np.asarray(im.convert("RGB"))
    return out
