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

The user may choose the subject instead (:class:`SubjectHint`: a point on the person or a box around them, on the
first frame of the video, in that video's pixels): in the first frame the person found under the point (or
overlapping the box most) is the subject, then followed as above (:class:`SubjectFilter` with ``hint``); nobody there
is :class:`SubjectNotFound`, naming the people that were found. :func:`follow_subject` follows a chosen subject
through a whole video (every few frames) so each window of a long edit can start from the subject's box there.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

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
# ... and of an area within this factor of it: a box several times larger is a detection that merged the subject
# with somebody next to them (seen on the bystander validation clips), not the subject
FOLLOW_MAX_GROWTH = 2.5

# a box hint picks the person overlapping it at least this much (intersection over union); a point hint the person
# whose body region (limbs drawn thick) it is on, or nearest to it within this fraction of the frame's longer side
HINT_MIN_IOU = 0.1
POINT_REACH = 0.04

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def min_person_pixels(width: int, height: int) -> int:
    """The side in pixels of the smallest square box :func:`landmark_box` takes for a person in a frame this size."""
    return int(math.ceil(math.sqrt(MIN_PERSON_AREA * width * height)))


def person_size_rule(width: int, height: int) -> str:
    """How large a person must be to be found, in words (for error messages)."""
    side = min_person_pixels(width, height)
    return (f"a person must show at least {MIN_VISIBLE_LANDMARKS} body landmarks and their box must cover at least "
            f"{MIN_PERSON_AREA:.0%} of the frame (about {side}x{side} px of the {width}x{height} frame the poses are "
            f"found in)")


class SubjectNotFound(ValueError):
    """A :class:`SubjectHint` points at nobody on the first frame."""


@dataclass(frozen=True)
class SubjectHint:
    """The person to follow, chosen on the first frame of a video: ``point=(x, y)`` on the person or
    ``box=(x0, y0, x1, y1)`` around them, in that video's pixels (before fitting; :meth:`fitted` maps it into the
    fitted frame the poses are found in). Exactly one of the two."""

    point: Optional[tuple[float, float]] = None
    box: Optional[Box] = None
    label: Optional[str] = field(default=None, compare=False)  # how errors name it (the hint as the user gave it)

    def __post_init__(self) -> None:
        if (self.point is None) == (self.box is None):
            raise ValueError("a subject hint is a point (x, y) or a box (x0, y0, x1, y1), exactly one")
        name, value, n = ("point", self.point, 2) if self.point is not None else ("box", self.box, 4)
        try:
            vals = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"subject {name} must be {n} numbers, got {value!r}") from None
        if len(vals) != n or not all(math.isfinite(v) for v in vals):
            raise ValueError(f"subject {name} must be {n} finite numbers, got {value!r}")
        if n == 4 and not (vals[0] < vals[2] and vals[1] < vals[3]):
            raise ValueError(f"subject box must be x0 < x1 and y0 < y1, got {vals}")
        object.__setattr__(self, name, vals)

    @classmethod
    def parse(cls, value: Any) -> Optional[SubjectHint]:
        """A hint from a request column: ``None``/``""`` (none: the most prominent person), a
        :class:`SubjectHint`, ``"x,y"`` / ``"x0,y0,x1,y1"`` (commas or spaces), a list of 2 or 4 numbers, JSON of
        either, or a dict ``{"point": [x, y]}`` / ``{"box": [x0, y0, x1, y1]}``. ``ValueError`` otherwise."""
        if value is None or isinstance(value, SubjectHint):
            return value
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            if text[0] in "[{":
                try:
                    return cls.parse(json.loads(text))
                except json.JSONDecodeError:
                    raise ValueError(f"subject hint is not valid JSON: {text[:80]!r}") from None
            value = [v for v in text.replace(",", " ").split() if v]
        if isinstance(value, dict):
            unknown = set(value) - {"point", "box"}
            if unknown:
                raise ValueError(f"subject hint has unknown key(s): {', '.join(sorted(map(str, unknown)))}")
            return cls(point=value.get("point"), box=value.get("box"))
        if isinstance(value, Sequence):
            if len(value) == 2:
                return cls(point=tuple(value))
            if len(value) == 4:
                return cls(box=tuple(value))
        raise ValueError(f"subject hint must be a point x,y or a box x0,y0,x1,y1, got {str(value)[:80]!r}")

    def to_dict(self) -> dict:
        return {"point": list(self.point)} if self.point is not None else {"box": list(self.box)}

    def fitted(self, geometry: dict) -> SubjectHint:
        """The hint in the fitted frame: ``geometry`` is :func:`pipelines.media.geometry.fit_geometry`'s map
        (``x_out = x_in * scale + ox``, the same for y with ``oy``)."""
        k, ox, oy = float(geometry["scale"]), float(geometry["ox"]), float(geometry["oy"])
        label = self.describe() + " (video pixels)"
        if self.point is not None:
            return SubjectHint(point=(self.point[0] * k + ox, self.point[1] * k + oy), label=label)
        x0, y0, x1, y1 = self.box
        return SubjectHint(box=(x0 * k + ox, y0 * k + oy, x1 * k + ox, y1 * k + oy), label=label)

    def describe(self) -> str:
        if self.label:
            return self.label
        if self.point is not None:
            return f"the point ({self.point[0]:g}, {self.point[1]:g})"
        return "the box ({:g}, {:g}, {:g}, {:g})".format(*self.box)


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
    overlapping it most. -1 when nobody is there, or nobody of about its size (area within
    :data:`FOLLOW_MAX_GROWTH` either way) overlaps the previous box by ``FOLLOW_MIN_IOU`` (the subject was not found
    in this frame: never switch to somebody else, nor to a detection that merged the subject with a neighbour)."""
    if not people:
        return -1
    if previous is None:
        return int(np.argmax([p.prominence for p in people]))
    area = _box_area(previous)
    overlaps = [box_iou(p.box, previous) if 1 / FOLLOW_MAX_GROWTH <= _box_area(p.box) / area <= FOLLOW_MAX_GROWTH
                else 0.0 for p in people]
    best = int(np.argmax(overlaps))
    return best if overlaps[best] >= FOLLOW_MIN_IOU else -1


def _box_area(box: Box) -> float:
    return max(1e-6, (box[2] - box[0]) * (box[3] - box[1]))


def pick(people: list[Person], hint: SubjectHint, width: int, height: int) -> int:
    """Index of the person ``hint`` (in the frame's pixels) chooses, -1 for nobody: for a point, the person whose
    body region (:func:`body_region`) holds it or comes nearest, within :data:`POINT_REACH` (the most prominent of
    those it is on); for a box, the person overlapping it most, at least :data:`HINT_MIN_IOU`."""
    if not people:
        return -1
    if hint.box is not None:
        overlaps = [box_iou(p.box, hint.box) for p in people]
        best = int(np.argmax(overlaps))
        return best if overlaps[best] >= HINT_MIN_IOU else -1
    x, y = hint.point
    reach = POINT_REACH * max(width, height)
    dist = []
    for p in people:
        ys, xs = np.nonzero(p.region(width, height))
        dist.append(float(np.min(np.hypot(xs - x, ys - y))) if len(xs) else np.inf)
    near = [k for k, dk in enumerate(dist) if dk <= min(min(dist), reach) + 0.5]
    return max(near, key=lambda k: people[k].prominence) if near else -1


def _not_found(hint: SubjectHint, people: list[Person], width: int, height: int) -> SubjectNotFound:
    found = "; ".join("({:.0f}, {:.0f}, {:.0f}, {:.0f})".format(*p.box) for p in people)
    where = (f"the people found there have boxes {found}" if people else
             f"nobody was found there ({person_size_rule(width, height)})")
    return SubjectNotFound(f"no person at {hint.describe()} on the first frame: {where} (in the {width}x{height} "
                           "frame the poses are found in)")


class SubjectFilter:
    """Per clip: :meth:`scan` decides from a few frames whether anyone besides the subject is there; if so,
    :meth:`__call__` returns each frame with everybody but the subject painted out (else the frame unchanged).

    With ``hint`` (a :class:`SubjectHint` in the frames' pixels) the subject is the person it picks in the first
    frame (:func:`pick`; :class:`SubjectNotFound` when nobody is there), then followed; every frame is searched.
    With ``strict=False`` (a window starting where the subject was last seen) nobody at the hint is no error: the
    hint is tried again on the next frame, and meanwhile everybody found is painted out."""

    def __init__(self, detect: Callable[[np.ndarray], Optional[np.ndarray]], hint: Optional[SubjectHint] = None,
                 strict: bool = True):
        self.detect = detect
        self.hint = hint
        self.strict = bool(strict)
        self.crowded = hint is not None
        self.subject: Optional[Person] = None

    def scan(self, frames: np.ndarray) -> bool:
        n = len(frames)
        self.subject = None
        if self.hint is not None:  # the hinted person must be found in the first frame: search every frame
            self.crowded = True
            return True
        picks = np.unique(np.linspace(0, n - 1, min(n, SCAN_FRAMES)).round().astype(int)) if n else []
        self.crowded = any(len(find_people(self.detect, frames[i])) > 1 for i in picks)
        return self.crowded

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if not self.crowded:
            return frame
        h, w = frame.shape[:2]
        people = find_people(self.detect, frame)
        if self.hint is not None and self.subject is None:
            k = pick(people, self.hint, w, h)
            if k < 0 and self.strict:
                raise _not_found(self.hint, people, w, h)
        else:
            k = follow(people, self.subject.box if self.subject is not None else None)
        if k >= 0:
            self.subject = people[k]
        # subject not found here: paint out whoever was found, sparing where the subject was last seen
        keep = self.subject.region(w, h, KEEP_THICKNESS) if self.subject is not None else None
        return paint_out(frame, [p.region(w, h) for j, p in enumerate(people) if j != k], keep=keep)


def follow_subject(detect: Callable[[np.ndarray], Optional[np.ndarray]], frames: Iterable[np.ndarray],
                   hint: SubjectHint) -> list[Optional[Box]]:
    """The chosen subject's box in each of ``frames`` (the first one is where ``hint`` applies; all in the same
    pixels): picked by ``hint`` in the first frame, then the person overlapping the previous box most (None where
    the subject was not found; the last box found is kept as the reference)."""
    boxes: list[Optional[Box]] = []
    subject: Optional[Box] = None
    for i, frame in enumerate(frames):
        h, w = frame.shape[:2]
        people = find_people(detect, frame)
        if i == 0:
            k = pick(people, hint, w, h)
            if k < 0:
                raise _not_found(hint, people, w, h)
        else:
            k = follow(people, subject)
        if k >= 0:
            subject = people[k].box
        boxes.append(people[k].box if k >= 0 else None)
    return boxes


@dataclass(frozen=True)
class SubjectTrack:
    """A chosen subject followed through a video (:func:`follow_subject`): its box, in the fitted frame's pixels, at
    some of the video's frame indices (every few frames); crosses process boundaries as :meth:`to_dict`."""

    frames: tuple[int, ...]
    boxes: tuple[Optional[Box], ...]

    def __post_init__(self) -> None:
        if len(self.frames) != len(self.boxes):
            raise ValueError("a subject track has one box (or None) per frame")
        object.__setattr__(self, "frames", tuple(int(f) for f in self.frames))
        object.__setattr__(self, "boxes", tuple(None if b is None else tuple(float(v) for v in b)
                                                for b in self.boxes))

    def hint_at(self, frame: int) -> Optional[SubjectHint]:
        """The subject's box at ``frame`` (fitted pixels) as a hint: the last box found at or before it (the first
        box for an earlier frame); None when the subject was never found."""
        found = [(f, b) for f, b in zip(self.frames, self.boxes) if b is not None]
        if not found:
            return None
        before = [b for f, b in found if f <= frame]
        return SubjectHint(box=before[-1] if before else found[0][1])

    def within(self, indices) -> SubjectTrack:
        """The part of the track that frames ``indices`` need: its entries from the last found box at or before
        their first frame on, up to their last frame (what :meth:`hint_at` answers for any of them)."""
        if not len(indices):
            return SubjectTrack((), ())
        lo, hi = min(indices), max(indices)
        found = [k for k, b in enumerate(self.boxes) if b is not None]
        before = [k for k in found if self.frames[k] <= lo]
        anchor = before[-1:] or found[:1]  # what hint_at(lo) answers from
        keep = sorted(set(anchor) | {k for k, f in enumerate(self.frames) if lo < f <= hi})
        return SubjectTrack(tuple(self.frames[k] for k in keep), tuple(self.boxes[k] for k in keep))

    def to_dict(self) -> dict:
        return {"frames": list(self.frames), "boxes": [None if b is None else list(b) for b in self.boxes]}

    @classmethod
    def from_dict(cls, d: dict) -> SubjectTrack:
        return cls(tuple(d["frames"]), tuple(d["boxes"]))
