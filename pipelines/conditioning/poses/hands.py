"""Hands for a body: candidates from the hand detector, on the frame and on a magnified crop around each wrist,
assigned to the wrists they belong to.

Hands of a full-body dancer are a few dozen pixels wide, below what the palm detector finds on a whole frame; a
square crop centred a little beyond each visible wrist (along the forearm), a few forearm lengths wide and magnified
to ``CROP_SIZE`` pixels, shows the detector a hand of the size it was trained on (the usual body-then-hand approach
of OpenPose and DWPose). :func:`attach_hands` then keeps, per wrist, the nearest candidate that sits on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.conditioning.poses.base import to_pixels

# A hand belongs to a body wrist only when its root (hand landmark 0) lies within this fraction of the forearm
# (elbow→wrist) length of that wrist (else of HAND_MIN_REACH px); a hand nearer the other wrist is swapped over;
# no hand is kept for a wrist that is not visible (no hands where the body has none, e.g. above the head).
HAND_MAX_WRIST_DIST = 0.6
HAND_MIN_REACH = 12.0
HAND_MIN_SCORE = 0.5  # the stand-alone hand detector's confidence gate (handedness score)


# Wrist crops: centred CROP_AHEAD forearm lengths beyond the wrist, CROP_SIDE forearm lengths wide (at least
# CROP_MIN_SIDE px), magnified to CROP_SIZE px.
CROP_AHEAD = 0.5
CROP_SIDE = 2.0
CROP_MIN_SIDE = 32
CROP_SIZE = 256
CROP_MIN_SCORE = 0.3  # the hand detector's gate in a wrist crop (a crop already sits on a wrist)
WRISTS = ((7, 6), (4, 3))  # OpenPose (wrist, elbow): left, right


@dataclass(frozen=True)
class Crop:
    """A square view of a frame: ``x0, y0`` its top-left corner and ``side`` its size in frame pixels, around the
    OpenPose ``wrist``."""

    x0: float
    y0: float
    side: float
    wrist: int = -1

    def image(self, frame: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
        import cv2

        s = size / self.side
        m = np.array([[s, 0, -self.x0 * s], [0, s, -self.y0 * s]], np.float64)
        return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def to_frame(self, pts: np.ndarray, width: int, height: int, size: int = CROP_SIZE) -> np.ndarray:
        """(21, 3) crop pixels + inside flag → frame pixels + inside-the-frame flag."""
        out = np.array(pts, np.float32, copy=True)
        out[:, :2] = out[:, :2] * (self.side / size) + (self.x0, self.y0)
        out[:, 2] *= _inside(out, width, height)
        return out


def wrist_crops(body: np.ndarray, width: int, height: int, min_visibility: float = 0.5) -> list[Crop]:
    """One :class:`Crop` per visible wrist whose elbow is visible too (the forearm sets the crop's size)."""
    crops = []
    for wrist, elbow in WRISTS:
        if body[wrist, 2] < min_visibility or body[elbow, 2] < min_visibility:
            continue
        fore = body[wrist, :2] - body[elbow, :2]
        length = float(np.hypot(*fore))
        if length < 1:
            continue
        cx, cy = body[wrist, :2] + CROP_AHEAD * fore
        side = max(CROP_SIDE * length, CROP_MIN_SIDE)
        crops.append(Crop(float(cx - side / 2), float(cy - side / 2), float(side), wrist))
    return crops


def _inside(pts: np.ndarray, w: int, h: int) -> np.ndarray:
    return (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)


def hand_points(hl, w: int, h: int) -> np.ndarray:
    """MediaPipe hand landmarks (normalised to a w×h image) → (21, 3) pixels + inside-the-image flag."""
    xs, ys = to_pixels([p.x for p in hl.landmark], [p.y for p in hl.landmark], w, h)
    pts = np.stack([xs, ys], 1)
    return np.concatenate([pts, _inside(pts, w, h)[:, None].astype(np.float32)], 1)


def attach_hands(body: np.ndarray, candidates: list[np.ndarray], min_visibility: float = 0.5) -> np.ndarray:
    """Assign hand candidates (each (21, 3) px + score) to the body's wrists (OpenPose 7 = left, 4 = right).

    Returns (2, 21, 3) [left, right]. A candidate goes to the wrist its root is nearest to, only within
    ``HAND_MAX_WRIST_DIST`` × forearm length (at least ``HAND_MIN_REACH`` px); each wrist takes the nearest
    candidate; a wrist with a score below ``min_visibility`` gets no hand."""
    out = np.zeros((2, 21, 3), np.float32)
    pairs = []
    for k, (wrist, elbow) in enumerate(((7, 6), (4, 3))):
        if body[wrist, 2] < min_visibility:
            continue
        fore = float(np.hypot(*(body[wrist, :2] - body[elbow, :2]))) if body[elbow, 2] >= min_visibility else 0.0
        reach = max(HAND_MAX_WRIST_DIST * fore, HAND_MIN_REACH)
        for c, cand in enumerate(candidates):
            d = float(np.hypot(*(cand[0, :2] - body[wrist, :2])))
            if d <= reach:
                pairs.append((d, k, c))
    used_k, used_c = set(), set()
    for _d, k, c in sorted(pairs):
        if k in used_k or c in used_c:
            continue
        out[k] = candidates[c]
        used_k.add(k)
        used_c.add(c)
    return out
