"""Retarget the driving skeleton to the source person's size and placement.

Default: ``mode="silhouette"`` when both people's masks are known (per output frame, a uniform scaling of the
driving skeleton that matches the silhouette heights — the official ``target_aligned_poses`` are exactly such
per-frame similarities of ``target_poses``), else ``mode="ground"`` (one uniform scaling about the point on the floor
under the person, hip-centre x and ankle or bottom-edge y, by the source/driving stature ratio: for drivings without
pixels). The older per-bone mode (``mode="bones"``) is described below; :func:`compute_alignment` has the rules.

The transform is computed once per request from a few reference frames and is a small frozen
:class:`AlignTransform`, so window workers can apply it independently (it crosses process boundaries as a dict,
:meth:`AlignTransform.to_dict` / :meth:`AlignTransform.from_dict`: JSON, the batch task's Arrow row):

* ``bone_scale`` — per bone (parent→child in a tree rooted at the neck): median source length / median driving
  length over the reference frames (falls back to ``global_scale`` for bones not seen in both);
* ``global_scale`` — torso (neck → mid-hip) or shoulder-width ratio; scales the neck's motion;
* ``src_anchor`` / ``drv_anchor`` — the neck positions over the reference frames: the driving neck's displacement from
  its reference is scaled and added to the source neck;
* ``width_ratio`` — source/driving body width (masks), used by the predicted target mask.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from pipelines.conditioning.masks import body_width, similarity_mask, with_source_shape
from pipelines.conditioning.poses.keypoints import PoseTrack

ROOT = 1
# (parent, child) in processing order
TREE = [(1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
        (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
THR = 0.3
MODES = ("silhouette", "ground", "bones")


@dataclass(frozen=True)
class AlignTransform:
    """The alignment of one request's driving skeleton to its source person (see the module docstring).

    The defaults are what a transform without the field means (a version-1 transform has no ``mode``: per-bone).
    Sequences are stored as tuples; ``bone_scale`` is a plain dict (the instance is frozen: treat it as read-only).
    """

    version: int = 2
    mode: str = "bones"  # one of MODES
    size: Optional[tuple[int, int]] = None  # (H, W) of the fitted frame it was computed in; None: the track's own
    global_scale: float = 1.0
    bone_scale: dict[str, float] = field(default_factory=dict)  # "parent-child" → length ratio ("bones" mode)
    src_anchor: Optional[tuple[float, float]] = None  # the source's reference neck position
    drv_anchor: Optional[tuple[float, float]] = None  # the driving's reference neck position
    width_ratio: float = 1.0  # source / driving body width (masks)
    keep_x: bool = True  # "bones" mode: the neck keeps the driving's x
    identity: bool = False  # the people already match in size: the driving skeleton is kept as is

    def __post_init__(self) -> None:
        for name, kind in (("size", int), ("src_anchor", float), ("drv_anchor", float)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(kind(v) for v in value))
        object.__setattr__(self, "bone_scale", dict(self.bone_scale))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: sequences as lists; ``identity`` only when true (the transform's JSON as it has been
        since version 1)."""
        d = dataclasses.asdict(self)
        for name in ("size", "src_anchor", "drv_anchor"):
            d[name] = None if d[name] is None else list(d[name])
        if not self.identity:
            del d["identity"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlignTransform:
        """The inverse of :meth:`to_dict`; an absent or null field takes its default, an unknown one raises
        ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"alignment transform has unknown field(s): {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in d.items() if v is not None})


def _lengths(body: np.ndarray, a: int, b: int) -> np.ndarray:
    ok = (body[:, a, 2] > THR) & (body[:, b, 2] > THR)
    return np.hypot(*(body[ok, a, :2] - body[ok, b, :2]).T) if ok.any() else np.zeros(0)


def _torso(body: np.ndarray) -> np.ndarray:
    ok = (body[:, 1, 2] > THR) & (body[:, 8, 2] > THR) & (body[:, 11, 2] > THR)
    if not ok.any():
        return np.zeros(0)
    mid = (body[ok, 8, :2] + body[ok, 11, :2]) / 2
    return np.hypot(*(body[ok, 1, :2] - mid).T)


def _ref_frames(track: PoseTrack, n: int) -> np.ndarray:
    good = np.nonzero((track.body[:, :, 2] > THR).sum(1) >= 6)[0]
    return good[:n] if len(good) else np.arange(min(n, len(track)))


def _ground(body: np.ndarray, height: int) -> float:
    """The floor line of one frame: the ankles when seen, else the bottom edge (feet cut by the frame)."""
    ank = [j for j in (10, 13) if body[j, 2] > THR]
    return float(body[ank, 1].max()) if ank else float(height - 1)


def _centre_x(body: np.ndarray) -> float | None:
    hips = [j for j in (8, 11) if body[j, 2] > THR]
    if hips:
        return float(body[hips, 0].mean())
    vis = body[:, 2] > THR
    return float(body[vis, 0].mean()) if vis.any() else None


def _stature(body: np.ndarray, height: int) -> np.ndarray:
    """Per frame: floor line minus neck height (px) — the standing size the alignment matches; 0 if unknown."""
    out = np.zeros(len(body), np.float32)
    for t, b in enumerate(body):
        if b[1, 2] > THR:
            out[t] = max(0.0, _ground(b, height) - b[1, 1])
    return out


def compute_alignment(source_track: PoseTrack, driving_track: PoseTrack, ref_frames: int = 4,
                      source_masks: np.ndarray | None = None, driving_masks: np.ndarray | None = None,
                      tolerance: float = 0.1, keep_x: bool = True, mode: str | None = None) -> AlignTransform:
    """The :class:`AlignTransform` from the first ``ref_frames`` good frames of each track.

    Both tracks must be in the same fitted frame size. Modes (default: ``"silhouette"`` when masks are given, else
    ``"ground"``):

    * ``"silhouette"`` — the official rule, recovered from the fixtures (every official aligned frame is an exact
      uniform scaling of the driving frame, residual < 1 px): per output frame, scale the driving skeleton so its
      silhouette height matches the source's in that frame, about the driving silhouette's bottom-centre
      (:func:`silhouette_similarity`; needs both masks per frame in :func:`apply_alignment`).
    * ``"ground"`` — one reference scale, ``global_scale`` = source / driving stature (floor line − neck height),
      about ``(hip-centre x, floor y)`` of every driving frame; for drivings without pixels (a pose track).
    * ``"bones"`` — each bone length retargeted to the source's, anchored at the neck (older behaviour).

    Masks (optional, same frames as the reference frames of the tracks) give ``width_ratio`` and the silhouette
    fallback scale. In ``ground``/``bones`` mode, when the size ratio
    is within ``tolerance`` of 1 the skeleton is kept unchanged (the official samples do the same).
    """
    if mode is None:
        mode = "silhouette" if source_masks is not None and driving_masks is not None else "ground"
    if mode not in MODES:
        raise ValueError(f"alignment mode must be 'silhouette', 'ground' or 'bones', not {mode!r}")
    if source_track.size != driving_track.size:
        driving_track = driving_track.rescaled(source_track.size)
    H = int(source_track.size[0])
    si, di = _ref_frames(source_track, ref_frames), _ref_frames(driving_track, ref_frames)
    sb, db = source_track.body[si], driving_track.body[di]
    ts, td = _torso(sb), _torso(db)
    if len(ts) and len(td) and np.median(td) > 1:
        g = float(np.median(ts) / np.median(td))
    else:
        ss, ds = _lengths(sb, 2, 5), _lengths(db, 2, 5)
        g = float(np.median(ss) / np.median(ds)) if len(ss) and len(ds) and np.median(ds) > 1 else 1.0
    if mode in ("ground", "silhouette"):
        hs, hd = _stature(sb, H), _stature(db, H)
        hs, hd = hs[hs > 1], hd[hd > 1]
        if len(hs) and len(hd):
            g = float(np.median(hs) / np.median(hd))
    g = float(np.clip(g, 0.2, 5.0))
    scales = {}
    if mode == "bones":
        for a, b in TREE:
            ls, ld = _lengths(sb, a, b), _lengths(db, a, b)
            if len(ls) and len(ld) and np.median(ld) > 1:
                s = float(np.median(ls) / np.median(ld))
                scales[f"{a}-{b}"] = float(np.clip(s, g / 2.5, g * 2.5))

    def anchor(body):
        ok = body[:, ROOT, 2] > THR
        return body[ok, ROOT, :2].mean(0).tolist() if ok.any() else None
    sa, da = anchor(sb), anchor(db)
    width_ratio = g
    if source_masks is not None and driving_masks is not None:
        ws = [body_width(m, b) for m, b in zip(source_masks[: len(sb)], source_track.body[: len(source_masks)])]
        wd = [body_width(m, b) for m, b in zip(driving_masks[: len(db)], driving_track.body[: len(driving_masks)])]
        ws, wd = [w for w in ws if w], [w for w in wd if w]
        if ws and wd:
            width_ratio = float(np.clip(np.median(ws) / np.median(wd), 0.3, 3.0))
    transform = AlignTransform(version=2, mode=mode, size=tuple(source_track.size), global_scale=g, bone_scale=scales,
                               src_anchor=sa, drv_anchor=da, width_ratio=width_ratio, keep_x=bool(keep_x))
    if mode == "silhouette" and source_masks is not None and driving_masks is not None:
        sims = [silhouette_similarity(a, b) for a, b in zip(source_masks[:ref_frames], driving_masks[:ref_frames])]
        sims = [x[0] for x in sims if x is not None]
        if sims:  # the fallback scale for frames without masks (e.g. a pose-track driving input)
            g = float(np.median(sims))
    if abs(g - 1.0) < tolerance and mode != "silhouette":
        # The people already match in size: keep the driving skeleton as is (the official samples do the same; a
        # dead band also avoids re-targeting on detection noise). The width ratio still shapes the target mask.
        transform = dataclasses.replace(transform, global_scale=1.0, bone_scale={}, src_anchor=None, drv_anchor=None,
                                        identity=True)
    return transform


def _silhouette_extent(mask: np.ndarray) -> tuple[int, int, float] | None:
    """(top row, bottom row, bbox x-centre) of a person mask, or None if empty."""
    fg = mask > 127
    rows = np.nonzero(fg.any(1))[0]
    if len(rows) == 0:
        return None
    cols = np.nonzero(fg.any(0))[0]
    return int(rows[0]), int(rows[-1]), float(cols[0] + cols[-1]) / 2


def silhouette_similarity(source_mask: np.ndarray, driving_mask: np.ndarray,
                          max_scale: float = 3.0) -> tuple[float, float, float] | None:
    """``(scale, fx, fy)`` matching the driving silhouette's height to the source's in one frame, scaling about the
    driving silhouette's bottom-centre (``fx`` its bbox x-centre, ``fy`` its bottom row). With both people cut by
    the bottom edge this is exactly the official per-frame rule: ``s = (H-1 - src_top) / (H-1 - drv_top)``."""
    es, ed = _silhouette_extent(source_mask), _silhouette_extent(driving_mask)
    if es is None or ed is None or ed[1] - ed[0] < 8 or es[1] - es[0] < 8:
        return None
    s = (es[1] - es[0]) / (ed[1] - ed[0])
    return float(np.clip(s, 1 / max_scale, max_scale)), ed[2], float(ed[1])


def frame_similarity(body: np.ndarray, transform: AlignTransform, source_mask: np.ndarray | None = None,
                     driving_mask: np.ndarray | None = None) -> tuple[float, float, float] | None:
    """``(scale, fx, fy)`` of the alignment of one driving frame (x' = fx + s (x - fx), same for y), or ``None``
    when the frame stays as is. ``mode="silhouette"`` uses the two masks of the frame when given (else falls back
    to the ground rule with the reference ``global_scale``)."""
    mode = transform.mode
    if mode == "silhouette" and source_mask is not None and driving_mask is not None:
        return silhouette_similarity(source_mask, driving_mask)
    g = float(transform.global_scale)
    if mode not in ("ground", "silhouette"):
        return None
    if transform.identity or abs(g - 1.0) < 1e-6:
        return None
    fx = _centre_x(body)
    if fx is None:
        return None
    H = int((transform.size or (512, 512))[0])
    return g, fx, _ground(body, H)


def identity_alignment(size=(512, 512)) -> AlignTransform:
    """The transform that keeps the driving skeleton as is (version 1: per-bone, every scale 1, no anchors)."""
    return AlignTransform(version=1, size=tuple(size))


def apply_alignment(track: PoseTrack, transform: AlignTransform, source_masks: np.ndarray | None = None,
                    driving_masks: np.ndarray | None = None) -> PoseTrack:
    """Retarget every frame of ``track`` (the driving poses) with ``transform``; returns a new track.

    In ``"silhouette"`` mode, ``source_masks`` / ``driving_masks`` (F, H, W) of the same output frames give the
    per-frame scale (:func:`silhouette_similarity`); without them the reference ``global_scale`` is used."""
    size = tuple(transform.size or track.size)
    if tuple(track.size) != size:
        track = track.rescaled(size)
    g = float(transform.global_scale)
    scales = transform.bone_scale
    sa, da = transform.src_anchor, transform.drv_anchor
    keep_x = bool(transform.keep_x)
    body_in, hands_in = track.body, track.hands
    body = body_in.copy()
    hands = hands_in.copy()
    similarity = transform.mode in ("ground", "silhouette")
    if similarity:
        have_masks = source_masks is not None and driving_masks is not None
        for t in range(len(track)):
            sim = frame_similarity(body_in[t], transform, source_masks[t] if have_masks else None,
                                   driving_masks[t] if have_masks else None)
            if sim is None:
                continue
            s, fx, fy = sim
            for arr in (body[t], hands[t]):
                arr[..., 0] = fx + s * (arr[..., 0] - fx)
                arr[..., 1] = fy + s * (arr[..., 1] - fy)
    for t in range(0 if similarity else len(track)):
        src = body_in[t]
        dst = body[t]
        if src[ROOT, 2] > THR and sa is not None and da is not None:
            dst[ROOT, :2] = np.asarray(sa) + g * (src[ROOT, :2] - np.asarray(da))
            if keep_x:
                dst[ROOT, 0] = src[ROOT, 0]
        elif src[ROOT, 2] > THR:
            dst[ROOT, :2] = src[ROOT, :2]
        placed = {ROOT: src[ROOT, 2] > THR}
        for a, b in TREE:
            s = scales.get(f"{a}-{b}", g)
            if src[b, 2] <= THR:
                continue
            if placed.get(a) and src[a, 2] > THR:
                dst[b, :2] = dst[a, :2] + s * (src[b, :2] - src[a, :2])
            else:  # parent missing: move with the root
                if placed.get(ROOT):
                    dst[b, :2] = dst[ROOT, :2] + g * (src[b, :2] - src[ROOT, :2])
            placed[b] = True
        # hands follow their wrist, scaled like the forearm
        for k, (wrist, fore) in enumerate(((7, "6-7"), (4, "3-4"))):
            h = hands_in[t, k]
            vis = h[:, 2] > THR
            if not vis.any():
                continue
            s = scales.get(fore, g)
            origin = h[0, :2] if h[0, 2] > THR else h[vis, :2].mean(0)
            if src[wrist, 2] > THR:
                new_origin = dst[wrist, :2] + (origin - src[wrist, :2]) * s
            elif placed.get(ROOT):
                new_origin = dst[ROOT, :2] + g * (origin - src[ROOT, :2])
            else:
                new_origin = origin
            hands[t, k, :, :2] = np.where(vis[:, None], new_origin + (h[:, :2] - origin) * s, h[:, :2])
    # keypoints pushed outside the frame become invisible
    H, W = size
    for arr in (body, hands):
        out = (arr[..., 0] < 0) | (arr[..., 0] >= W) | (arr[..., 1] < 0) | (arr[..., 1] >= H)
        arr[..., 2] = np.where(out, 0.0, arr[..., 2])
    return PoseTrack(body, hands, track.flags.copy(), size, track.fps, dict(track.meta))


def aligned_masks(driving_masks: np.ndarray, driving_body: np.ndarray, transform: AlignTransform,
                  source_masks: np.ndarray | None = None, width_ratio: float | None = None,
                  source_body: np.ndarray | None = None, target_body: np.ndarray | None = None) -> np.ndarray:
    """The predicted target mask ("the source person's silhouette under the target pose"): every driving mask moved
    by the same per-frame similarity as its skeleton (:func:`frame_similarity`; with
    ``source_masks`` of the same output frames in ``"silhouette"`` mode, the official per-frame rule).
    ``width_ratio`` optionally widens/narrows the silhouette about the fixed point; by default the shape is scaled
    uniformly (measured best against the official predicted masks: 0.83-0.86 IoU vs 0.51-0.85 for the plain
    driving mask and 0.48-0.69 for the per-bone warp of :func:`pipelines.conditioning.masks.warp_mask`).
    With ``source_masks``, ``source_body`` (the source keypoints) and ``target_body`` (the aligned keypoints) of the
    same frames, each moved mask takes on the source person's shape near its outline
    (:func:`pipelines.conditioning.masks.with_source_shape`)."""
    out = np.empty_like(driving_masks)
    shape = source_masks is not None and source_body is not None and target_body is not None
    for t, (m, b) in enumerate(zip(driving_masks, driving_body)):
        sim = frame_similarity(b, transform, None if source_masks is None else source_masks[t], m)
        if sim is None:
            out[t] = np.multiply(m > 127, 255, dtype=np.uint8)
        else:
            s, fx, fy = sim
            out[t] = similarity_mask(m, s, fx, fy, None if width_ratio is None else s * float(width_ratio))
        if shape:
            out[t] = with_source_shape(out[t], source_masks[t], source_body[t], target_body[t])
    return out
