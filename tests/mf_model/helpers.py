"""Small synthetic windows for model tests."""
from __future__ import annotations

import numpy as np

from mf_model import EditWindow


def box_window(frames: int = 4, h: int = 64, w: int = 64, shift: int = 12, seed: int = 0, name: str = "synthetic"):
    """A moving box 'person' over a gradient; the target is the same box shifted right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 90)], -1)
    src = np.repeat(base[None], frames, 0).astype(np.uint8)
    ms = np.zeros((frames, h, w), np.uint8)
    mt = np.zeros((frames, h, w), np.uint8)
    pose_s = np.zeros((frames, h, w, 3), np.uint8)
    pose_t = np.zeros((frames, h, w, 3), np.uint8)
    shift = min(shift, w // 4)
    for f in range(frames):
        x0 = w // 6 + f % max(w // 8, 1)
        y0, y1 = h // 4, 3 * h // 4
        bw = max(w // 4, 2)
        ms[f, y0:y1, x0:x0 + bw] = 255
        mt[f, y0:y1, x0 + shift:x0 + shift + bw] = 255
        src[f, y0:y1, x0:x0 + bw] = rng.integers(0, 255, 3)
        pose_s[f, y0:y1, x0 + bw // 2] = (255, 0, 0)
        pose_t[f, y0:y1, x0 + shift + bw // 2] = (255, 0, 0)
    return EditWindow(src, pose_s, pose_t, ms, mt, name=name)
