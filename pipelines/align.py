"""Retarget the driving skeleton to the source person's proportions and placement.

The transform is computed once per request from a few reference frames and is a small JSON-serialisable dict, so
window workers can apply it independently:

* ``bone_scale`` — per bone (parent→child in a tree rooted at the neck): median source length / median driving
  length over the reference frames (falls back to ``global_scale`` for bones not seen in both);
* ``global_scale`` — torso (neck → mid-hip) or shoulder-width ratio; scales the neck's motion;
* ``src_anchor`` / ``drv_anchor`` — the neck positions over the reference frames: the driving neck's displacement from
  its reference is scaled and added to the source neck;
* ``width_ratio`` — source/driving body width (masks), used by the predicted target mask.
"""
from __future__ import annotations

import numpy as np

from pipelines.poses.keypoints import PoseTrack

ROOT = 1
# (parent, child) in processing order
TREE = [(1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
        (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
THR = 0.3


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
    good = np.nonzero(((track.body[:, :, 2] > THR).sum(1) >= 6))[0]
    return good[:n] if len(good) else np.arange(min(n, len(track)))


def compute_alignment(source_track: PoseTrack, driving_track: PoseTrack, ref_frames: int = 4,
                      source_masks: np.ndarray | None = None, driving_masks: np.ndarray | None = None,
                      tolerance: float = 0.1, keep_x: bool = True) -> dict:
    """The alignment transform (JSON-serialisable dict) from the first ``ref_frames`` good frames of each track.

    Both tracks must be in the same fitted frame size. Masks (optional, same frames as the reference frames of the
    tracks, i.e. the first ones) give ``width_ratio``. When the size ratio is within ``tolerance`` of 1 the skeleton
    is kept unchanged. ``keep_x`` keeps the driving person's horizontal placement (the official samples do) and
    anchors only the vertical placement and scale to the source person.
    """
    if source_track.size != driving_track.size:
        driving_track = driving_track.rescaled(source_track.size)
    si, di = _ref_frames(source_track, ref_frames), _ref_frames(driving_track, ref_frames)
    sb, db = source_track.body[si], driving_track.body[di]
    ts, td = _torso(sb), _torso(db)
    if len(ts) and len(td) and np.median(td) > 1:
        g = float(np.median(ts) / np.median(td))
    else:
        ss, ds = _lengths(sb, 2, 5), _lengths(db, 2, 5)
        g = float(np.median(ss) / np.median(ds)) if len(ss) and len(ds) and np.median(ds) > 1 else 1.0
    g = float(np.clip(g, 0.2, 5.0))
    scales = {}
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
        from pipelines.masks import body_width

        ws = [body_width(m, b) for m, b in zip(source_masks[: len(sb)], source_track.body[: len(source_masks)])]
        wd = [body_width(m, b) for m, b in zip(driving_masks[: len(db)], driving_track.body[: len(driving_masks)])]
        ws, wd = [w for w in ws if w], [w for w in wd if w]
        if ws and wd:
            width_ratio = float(np.clip(np.median(ws) / np.median(wd), 0.3, 3.0))
    transform = {"version": 1, "size": list(source_track.size), "global_scale": g, "bone_scale": scales,
                 "src_anchor": sa, "drv_anchor": da, "width_ratio": width_ratio, "keep_x": bool(keep_x)}
    if abs(g - 1.0) < tolerance:
        # The people already match in size: keep the driving skeleton as is (the official samples do the same; a
        # dead band also avoids re-targeting on detection noise). The width ratio still shapes the target mask.
        transform.update({"global_scale": 1.0, "bone_scale": {}, "src_anchor": None, "drv_anchor": None,
                          "identity": True})
    return transform


def identity_alignment(size=(512, 512)) -> dict:
    return {"version": 1, "size": list(size), "global_scale": 1.0, "bone_scale": {}, "src_anchor": None,
            "drv_anchor": None, "width_ratio": 1.0}


def apply_alignment(track: PoseTrack, transform: dict) -> PoseTrack:
    """Retarget every frame of ``track`` (the driving poses) with ``transform``; returns a new track."""
    size = tuple(transform.get("size") or track.size)
    if tuple(track.size) != size:
        track = track.rescaled(size)
    g = float(transform.get("global_scale", 1.0))
    scales = transform.get("bone_scale", {})
    sa, da = transform.get("src_anchor"), transform.get("drv_anchor")
    keep_x = bool(transform.get("keep_x", True))
    body_in, hands_in = track.body, track.hands
    body = body_in.copy()
    hands = hands_in.copy()
    for t in range(len(track)):
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
