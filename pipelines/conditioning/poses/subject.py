"""Which person to follow when a frame holds several: find them all, keep the most prominent, paint out the rest.

Single-person pose models (MediaPipe's BlazePose and Holistic) follow whichever person their detector scores highest,
which in a busy scene may be a bystander. :func:`find_people` finds up to ``MAX_PEOPLE`` people in a frame with a
stateless single-person detector by painting out each person found and asking again. A person's region
(:func:`body_region`) is their skeleton drawn thick: limbs, torso and head, sized by the torso, so a person standing
inside another's bounding box (a close-up subject with spread arms, a bystander behind) is painted out without
touching the other. The subject is the most prominent person (landmark box area × mean visibility) in the first
frame that has anyone, then, frame by frame, the person whose box overlaps the subject's previous box most; the
subject is never switched to somebody who does not overlap it. Everyone else is painted out (:func:`paint_out`),
sparing the subject's own region, in the frame the tracked model sees, so its landmarks and its segmentation cover
the subject only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np

MAX_PEOPLE = 3
# frames checked for a second person before paying for the per-frame search (evenly spaced over the clip)
SCAN_FRAMES = 5
# a detection counts as a person only with this many landmarks at or above MIN_VISIBILITY
MIN_VISIBLE_LANDMARKS = 8
MIN_VISIBILITY = 0.5
# landmark boxes are grown by this fraction of their size on every side (hair, clothes, hands beyond the wrist)
BOX_MARGIN = 0.1
# a person's box must cover at least this fraction of the frame (smaller detections are noise or far away)
MIN_PERSON_AREA = 0.02
# body regions: limbs drawn this thick, and a head disc of this radius, in torso lengths (shoulders to hips);
# the subject's protected region is drawn thinner than the region painted out of the others
PAINT_THICKNESS = 0.5
KEEP_THICKNESS = 0.35
HEAD_RADIUS = 0.45
# BlazePose bones: arms, hands, torso, legs, feet, face
BONES = ((11, 12), (11, 13), (13, 15), (12, 14), (14, 16), (15, 17), (15, 19), (15, 21), (16, 18), (16, 20),
         (16, 22), (11, 23), (12, 24), (23, 24), (23, 25), (25, 27), (24, 26), (26, 28), (27, 29), (29, 31),
         (27, 31), (28, 30), (30, 32), (28, 32), (0, 2), (0, 5), (2, 7), (5, 8))
TORSO = (11, 12, 24, 23)
# a detection with this fraction of its visible landmarks inside the regions already painted out is a person
# found again from what painting left of them, not somebody else
SAME_PERSON_INSIDE = 0.5
# the subject is found again in the next frame only in a box overlapping its previous one at least this much
FOLLOW_MIN_IOU = 0.1

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class Person:
    landmarks: np.ndarray  # (33, 4) normalised x, y, z, visibility
    box: Box

    def region(self, width: int, height: int, thickness: float = PAINT_THICKNESS) -> np.ndarray:
        return body_region(self.landmarks, width, height, thickness)

    @property
    def prominence(self) -> float:
        x0, y0, x1, y1 = self.box
        vis = self.landmarks[:, 3]
        return (x1 - x0) * (y1 - y0) * float(vis[vis >= MIN_VISIBILITY].mean())


def landmark_box(lm: np.ndarray, width: int, height: int, margin: float = BOX_MARGIN) -> Optional[Box]:
    """Pixel box of the visible landmarks, grown by ``margin`` and clipped to the frame; None when too few are
    visible, or the box is too small, to be a person."""
    vis = lm[:, 3] >= MIN_VISIBILITY
    if int(vis.sum()) < MIN_VISIBLE_LANDMARKS:
        return None
    xs, ys = lm[vis, 0] * width, lm[vis, 1] * height
    mx, my = margin * (xs.max() - xs.min()), margin * (ys.max() - ys.min())
    box = (max(0.0, xs.min() - mx), max(0.0, ys.min() - my), min(float(width), xs.max() + mx),
           min(float(height), ys.max() + my))
    if (box[2] - box[0]) * (box[3] - box[1]) < MIN_PERSON_AREA * width * height:
        return None
    return box


def body_region(lm: np.ndarray, width: int, height: int, thickness: float) -> np.ndarray:
    """(H, W) bool: the person's visible bones drawn ``thickness`` torso lengths thick, the torso filled, a head
    disc of ``HEAD_RADIUS`` torso lengths at the nose."""
    import cv2

    vis = lm[:, 3] >= MIN_VISIBILITY
    pts = np.stack([lm[:, 0] * width, lm[:, 1] * height], 1)
    if vis[[11, 12, 23, 24]].all():
        torso = float(np.hypot(*(pts[[11, 12]].mean(0) - pts[[23, 24]].mean(0))))
    else:
        ys = pts[vis, 1]
        torso = float(ys.max() - ys.min()) / 3 if vis.any() else 0.0
    torso = max(torso, 8.0)
    out = np.zeros((height, width), np.uint8)
    ipts = np.round(np.clip(pts, -4 * max(width, height), 5 * max(width, height))).astype(np.int32)
    t = max(2, int(round(thickness * torso)))
    for a, b in BONES:
        if vis[a] and vis[b]:
            cv2.line(out, tuple(int(v) for v in ipts[a]), tuple(int(v) for v in ipts[b]), 1, t)
    if vis[list(TORSO)].all():
        cv2.fillPoly(out, [ipts[list(TORSO)]], 1)
    if vis[0]:
        cv2.circle(out, tuple(int(v) for v in ipts[0]), max(2, int(round(HEAD_RADIUS * torso))), 1, -1)
    return out.astype(bool)


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def paint_out(frame: np.ndarray, regions: list[np.ndarray], keep: Optional[np.ndarray] = None) -> np.ndarray:
    """A copy of ``frame`` with the (H, W) bool ``regions`` filled with the frame's median colour, except where
    ``keep`` is set."""
    out = np.array(frame, copy=True)
    if not regions:
        return out
    region = np.logical_or.reduce(regions)
    if keep is not None:
        region &= ~keep
    out[region] = np.median(out.reshape(-1, out.shape[-1]), axis=0).astype(out.dtype)
    return out


def find_people(detect: Callable[[np.ndarray], Optional[np.ndarray]], frame: np.ndarray,
                max_people: int = MAX_PEOPLE) -> list[Person]:
    """Up to ``max_people`` people in ``frame``: ``detect(image)`` returns one person's (33, 4) landmarks or None;
    each person found is painted out before asking again."""
    h, w = frame.shape[:2]
    people: list[Person] = []
    image = frame
    painted = np.zeros((h, w), bool)
    for _ in range(max_people):
        lm = detect(image)
        box = None if lm is None else landmark_box(lm, w, h)
        if box is None or (people and _inside(lm, painted) >= SAME_PERSON_INSIDE):
            break
        person = Person(np.asarray(lm, np.float32), box)
        people.append(person)
        painted |= person.region(w, h)
        image = paint_out(frame, [painted])
    return people


def _inside(lm: np.ndarray, region: np.ndarray) -> float:
    """Fraction of the visible landmarks that fall inside ``region`` (off-frame ones count as outside)."""
    h, w = region.shape
    vis = lm[:, 3] >= MIN_VISIBILITY
    x = np.floor(lm[vis, 0] * w).astype(int)
    y = np.floor(lm[vis, 1] * h).astype(int)
    ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    return float(region[y[ok], x[ok]].sum()) / max(int(vis.sum()), 1)


def follow(people: list[Person], previous: Optional[Box]) -> int:
    """Index of the subject among ``people``: the most prominent when there is no previous box, else the one
    overlapping it most. -1 when nobody is there, or nobody overlaps the previous box by ``FOLLOW_MIN_IOU`` (the
    subject was not found in this frame: never switch to somebody else)."""
    if not people:
        return -1
    if previous is None:
        return int(np.argmax([p.prominence for p in people]))
    overlaps = [box_iou(p.box, previous) for p in people]
    best = int(np.argmax(overlaps))
    return best if overlaps[best] >= FOLLOW_MIN_IOU else -1


class SubjectFilter:
    """Per clip: :meth:`scan` decides from a few frames whether anyone besides the subject is there; if so,
    :meth:`__call__` returns each frame with everybody but the subject painted out (else the frame unchanged)."""

    def __init__(self, detect: Callable[[np.ndarray], Optional[np.ndarray]]):
        self.detect = detect
        self.crowded = False
        self.subject: Optional[Person] = None

    def scan(self, frames: np.ndarray) -> bool:
        n = len(frames)
        picks = np.unique(np.linspace(0, n - 1, min(n, SCAN_FRAMES)).round().astype(int)) if n else []
        self.crowded = any(len(find_people(self.detect, frames[i])) > 1 for i in picks)
        self.subject = None
        return self.crowded

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if not self.crowded:
            return frame
        h, w = frame.shape[:2]
        people = find_people(self.detect, frame)
        k = follow(people, self.subject.box if self.subject is not None else None)
        if k >= 0:
            self.subject = people[k]
        # subject not found here: paint out whoever was found, sparing where the subject was last seen
        keep = self.subject.region(w, h, KEEP_THICKNESS) if self.subject is not None else None
        return paint_out(frame, [p.region(w, h) for j, p in enumerate(people) if j != k], keep=keep)
