"""The partial-body part of the validation set: fixture frames re-framed so the frame edge cuts a person.

Each variant re-frames the source, the driving video or both, frame by frame (a 2x3 similarity per frame), so the
frame cuts the person at the knees, the thighs, the hips or the chest (by the bottom edge: a zoom about a point above
the head), through the body by a side edge (a shift), both, or by a crop that changes over the clip (a push-in
zoom, a pan). The people, their poses and their masks are the official ones of the two fixture cases; only the
framing changes, so the ground truth is known by construction:

* source keypoints and masks: the official ones under the source re-framing;
* aligned target poses and predicted masks: the official rule recovered on the fixtures puts the driving skeleton,
  scaled to the source person's stature, at the driving person's x and on the source person's floor line (the
  fixtures' bottom edge), per frame. Re-framing the source by ``T_s`` (scale ``z``) therefore maps the official
  aligned pose by ``x' = X_d + z (x - F_x)``, ``y' = T_s(F)_y + z (y - F_y)``, where ``F`` is the official fixed
  point of the frame (the driving silhouette's bottom-centre) and ``X_d`` the x of ``F`` under the driving's
  re-framing ``T_d``: the person keeps the source's visible body scale (zoomed with it: the driving legs run past
  the frame edge) and the driving's horizontal place; re-framing the driving alone only moves it sideways with the
  driving person. With both re-framed alike this is exactly the re-framing (the joint variants of
  :mod:`benchmarks.prepare_validation`). Points that land outside the frame are not scored (the official renders
  cannot show them).

Cut levels come from the official source/driving keypoints of the case (median over the frames used): knees,
thighs (half-way hip to knee), hips, chest (40 % of the way neck to hips). A variant whose zoom would be under
:data:`MIN_ZOOM` (the person is already cut there, as case-6's are at the knees) is left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.prepare_validation import SIZE, Geo, _affine, ground_truth_map

CLASSES = ("src bottom", "src side", "src changing", "drv bottom", "drv side", "drv changing", "both")
LEVELS = ("knees", "thighs", "hips", "chest")
MIN_ZOOM = 1.08
HEAD_MARGIN = 6  # px kept above the highest silhouette top when zooming
SIDE_AT = 0.12  # a side cut puts the hip centre this fraction of the width from the edge


@dataclass(frozen=True)
class CropVariant:
    name: str
    cls: str  # one of CLASSES
    src: tuple[Geo, ...] | None  # per-frame re-framing of the source (None: unchanged)
    drv: tuple[Geo, ...] | None  # the same for the driving video


def _median_y(kp: np.ndarray, joints) -> float | None:
    ys = [kp[t, j, 1] for t in range(len(kp)) for j in joints if kp[t, j, 2] > 0]
    return float(np.median(ys)) if ys else None


def body_frame(kp: np.ndarray, masks: np.ndarray) -> dict:
    """A person's framing facts from official keypoints (F, 18, 3) and masks: the highest silhouette top, the hip
    centre x and the y of each cut level (None where the joints are not seen)."""
    tops = [np.nonzero((m > 127).any(1))[0] for m in masks]
    top = min(int(r[0]) for r in tops if len(r))
    hip, knee, neck = _median_y(kp, (8, 11)), _median_y(kp, (9, 12)), _median_y(kp, (1,))
    xs = [kp[t, j, 0] for t in range(len(kp)) for j in (8, 11) if kp[t, j, 2] > 0]
    levels = {"knees": knee, "thighs": None if hip is None or knee is None else (hip + knee) / 2, "hips": hip,
              "chest": None if hip is None or neck is None else neck + 0.4 * (hip - neck)}
    return {"top": top, "cx": float(np.median(xs)) if xs else SIZE / 2, "levels": levels}


def _zoom_to(info: dict, level: str) -> tuple[float, tuple[float, float]] | None:
    """(zoom, centre) putting ``level`` on the bottom edge, the head kept in the frame; None below MIN_ZOOM."""
    y = info["levels"].get(level)
    cy = max(0.0, info["top"] - HEAD_MARGIN)
    if y is None or y <= cy + 8:
        return None
    z = (SIZE - 1 - cy) / (y - cy)
    return (z, (info["cx"], cy)) if z >= MIN_ZOOM else None


def _side_shift(info: dict, zoom: float = 1.0, centre=(SIZE / 2, 0.0)) -> float:
    cx = centre[0] + zoom * (info["cx"] - centre[0])
    return (SIZE * SIDE_AT - cx) if cx < SIZE / 2 else (SIZE * (1 - SIDE_AT) - cx)


def _person_variants(info: dict, n: int, who: str) -> list[tuple[str, str, tuple[Geo, ...]]]:
    """(name, class, per-frame geometry) of one person's re-framings."""
    out = []
    for level in LEVELS:
        zc = _zoom_to(info, level)
        if zc is not None:
            out.append((f"{who} cut {level}", f"{who} bottom", (Geo(_affine(zc[0], zc[1])),) * n))
    out.append((f"{who} cut side", f"{who} side", (Geo(_affine(shift=(_side_shift(info), 0))),) * n))
    zc = _zoom_to(info, "hips") or _zoom_to(info, "thighs")
    if zc is not None:
        z, c = zc
        tx = _side_shift(info, z, c)
        out.append((f"{who} cut hips+side", f"{who} side", (Geo(_affine(z, c, (tx, 0))),) * n))
        ramp = np.linspace(0.0, 1.0, n) if n > 1 else np.ones(1)
        out.append((f"{who} push-in to hips", f"{who} changing",
                    tuple(Geo(_affine(1 + (z - 1) * f, c)) for f in ramp)))
    ramp = np.linspace(0.0, 1.0, n) if n > 1 else np.ones(1)
    tx = _side_shift(info)
    out.append((f"{who} pan off the side", f"{who} changing", tuple(Geo(_affine(shift=(tx * f, 0))) for f in ramp)))
    return out


def crop_variants(d: dict) -> list[CropVariant]:
    """The partial-body variants of one loaded case (:func:`benchmarks.prepare_validation.load_case`)."""
    n = len(d["source_images"])
    s_info = body_frame(d["source_poses_kp"], d["source_masks"])
    d_info = body_frame(d["target_poses_kp"], d["target_masks"])
    out = [CropVariant(name, cls, geo, None) for name, cls, geo in _person_variants(s_info, n, "src")]
    out += [CropVariant(name, cls, None, geo) for name, cls, geo in _person_variants(d_info, n, "drv")]
    zs, zd = _zoom_to(s_info, "hips"), _zoom_to(d_info, "thighs") or _zoom_to(d_info, "knees")
    if zs is not None and zd is not None:
        out.append(CropVariant("src hips, drv thighs", "both", (Geo(_affine(zs[0], zs[1])),) * n,
                               (Geo(_affine(zd[0], zd[1])),) * n))
    return out


def build_crop_variant(d: dict, cv: CropVariant) -> dict:
    """Inputs and ground truth of one variant, with the keys of
    :func:`benchmarks.prepare_validation.build_variant`."""
    n = len(d["source_images"])
    ident = (Geo(),) * n
    gs, gd = cv.src or ident, cv.drv or ident
    v = {"fps": d["fps"]}
    v["src"] = np.stack([g.image(im) for g, im in zip(gs, d["source_images"])])
    v["drv"] = np.stack([g.image(im) for g, im in zip(gd, d["target_images"])])
    v["gt_src_kp"] = np.stack([g.points(kp) for g, kp in zip(gs, d["source_poses_kp"])])
    v["gt_src_mask"] = np.stack([g.image(m, nearest=True) for g, m in zip(gs, d["source_masks"])])
    v["gt_src_hand"] = np.stack([g.image(h.astype(np.uint8), nearest=True) > 0
                                 for g, h in zip(gs, d["source_poses_hand"])])
    kps, hands, preds = [], [], []
    for t in range(n):
        a = ground_truth_map(d["source_masks"][t], d["target_masks"][t], gs[t], gd[t])
        kps.append(a.points(d["target_aligned_poses_kp"][t]))
        hands.append(a.image(d["target_aligned_poses_hand"][t].astype(np.uint8), nearest=True) > 0)
        preds.append(a.image(d["predicted_masks"][t], nearest=True))
    v["gt_al_kp"], v["gt_al_hand"], v["gt_pred"] = np.stack(kps), np.stack(hands), np.stack(preds)
    return v
