"""Person masks: the source person's silhouette (MediaPipe segmentation) and the "predicted" target mask.

The official mask predictor is unreleased. Default
(:func:`pipelines.conditioning.align.aligned_masks`): the driving person's mask moved by the
same per-frame similarity as the aligned skeleton — the official predicted masks are the driving silhouette scaled
about its bottom-centre to the source person's height. The older alternative
(:func:`warp_mask`) predicts the source person's silhouette under the target pose by
warping the *driving* person's mask through the skeleton alignment: every mask pixel follows the bone it is
nearest to (per-bone similarity from the driving skeleton to the aligned skeleton), and its distance from that bone is
scaled by the source/driving body-width ratio, so the mask takes the source person's build and placement.
"""
from __future__ import annotations

import numpy as np

from pipelines.conditioning.poses.keypoints import LIMB_SEQ

# Person probability → mask. MediaPipe's segmentation is 1.0 inside a person and ramps down over a halo a few
# pixels wide (and over cast shadows and motion blur next to the body), where the official masks are tight: the
# pixels our mask has beyond the official one have median probability 0.63-0.85 on the four fixture videos. IoU with
# the official masks at 0.5 / 0.6 / 0.7 (24 frames each, the fixtures: tuned on): sources 0.958/0.960/0.954 and
# 0.942/0.948/0.946, drivers 0.970/0.975/0.972 and 0.860/0.878/0.892; on the validation set (the fixtures under
# transforms) 0.5 → 0.6 lowered no variant's source-mask IoU (mean 0.948 → 0.952; predicted-mask IoU
# 0.855 → 0.857).
THRESHOLD = 0.6
# The predicted target mask (:func:`with_source_shape`): the driving silhouette scaled to the source's height gives
# the pose's outline, the source's own silhouette carried onto the aligned skeleton (:func:`warp_mask`) the person's
# shape (hair, clothes, build). They are blended with this weight on the source's shape and smoothed by a Gaussian of
# this fraction of the moved silhouette's height (6 px for a person 500 px tall); the source's shape then moves the
# outline only near the driving outline (alone it cannot pass the 0.5 threshold). Measured with
# benchmarks/prepare_validation.py at 24 frames against the official predicted masks, IoU without -> with:
# validation set 0.843 -> 0.855 (every variant gains 0.002-0.017; the worst variant 0.819 -> 0.832), fixtures
# (tuned on) 0.845 -> 0.863. Weights 0.3-0.5 and 3-9 px were tried: 0.5 loses up to 0.04 on some variants, 9 px
# lowers the worst one; a blur sized by the frame instead of the person lost 0.003-0.007 on the variants with
# smaller people.
SOURCE_SHAPE_WEIGHT = 0.3
SOURCE_SHAPE_SIGMA = 0.012
# bones used to carry the mask (OpenPose pairs, no face edges beyond the head bone)
MASK_BONES = [b for b in LIMB_SEQ[:13]] + [(0, 14), (0, 15), (14, 16), (15, 17)]


def binarize(prob: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Probabilities (..., H, W) → uint8 {0, 255}."""
    # uint8 throughout: np.where(..., 255, 0) would build an int64 array 8x the mask size first
    return np.multiply(np.asarray(prob) > threshold, 255, dtype=np.uint8)


def person_masks(frames: np.ndarray, extractor=None) -> np.ndarray:
    """(N, H, W, 3) RGB → (N, H, W) uint8 {0, 255} masks of the most prominent person (MediaPipe segmentation)."""
    from pipelines.conditioning.poses import get_extractor

    ext = extractor or get_extractor("mediapipe")
    _, _, prob = ext.extract(frames)
    if prob is None:
        raise RuntimeError("pose extractor gives no segmentation")
    return binarize(prob)


def _seg_dist(px: np.ndarray, a: np.ndarray, b: np.ndarray):
    ab = b - a
    L2 = float(ab @ ab) + 1e-6
    t = np.clip(((px - a) @ ab) / L2, 0.0, 1.0)
    proj = a + t[:, None] * ab
    return np.hypot(*(px - proj).T), t


def warp_mask(mask: np.ndarray, body_from: np.ndarray, body_to: np.ndarray, width_ratio: float = 1.0,
              thr: float = 0.3, out_size=None) -> np.ndarray:
    """Move a person mask from skeleton ``body_from`` to skeleton ``body_to`` (both (18, 3) pixels).

    Each foreground pixel is attached to its nearest visible bone of ``body_from``; it keeps its position along
    the bone (fraction t) and its signed perpendicular offset (scaled by ``width_ratio``) relative to the same bone
    of ``body_to``. Forward splatting with a small closing fills the holes. Pixels with no usable bone are moved
    by the mean translation of the visible joints.
    """
    import cv2

    H, W = mask.shape if out_size is None else out_size
    out = np.zeros((H, W), np.uint8)
    ys, xs = np.nonzero(mask > 127)
    if len(xs) == 0:
        return out
    px = np.stack([xs, ys], 1).astype(np.float32)
    bones = [(a, b) for a, b in MASK_BONES if min(body_from[a, 2], body_from[b, 2], body_to[a, 2],
                                                     body_to[b, 2]) > thr]
    both = (body_from[:, 2] > thr) & (body_to[:, 2] > thr)
    if not bones:
        if not both.any():
            return out
        shift = (body_to[both, :2] - body_from[both, :2]).mean(0)
        dst = px + shift
    else:
        best_d = np.full(len(px), np.inf, np.float32)
        dst = np.zeros_like(px)
        for a, b in bones:
            A, B = body_from[a, :2], body_from[b, :2]
            A2, B2 = body_to[a, :2], body_to[b, :2]
            d, t = _seg_dist(px, A, B)
            sel = d < best_d
            if not sel.any():
                continue
            best_d[sel] = d[sel]
            ab = B - A
            L = float(np.hypot(*ab)) + 1e-6
            u = ab / L
            n = np.array([-u[1], u[0]], np.float32)
            along = (px[sel] - A) @ u          # may exceed the bone (extremities): keep it, scaled
            perp = (px[sel] - A) @ n
            ab2 = B2 - A2
            L2 = float(np.hypot(*ab2)) + 1e-6
            u2 = ab2 / L2
            n2 = np.array([-u2[1], u2[0]], np.float32)
            s_along = L2 / L
            dst[sel] = A2 + np.outer(along * s_along, u2) + np.outer(perp * width_ratio, n2)
    xi = np.round(dst[:, 0]).astype(np.int64)
    yi = np.round(dst[:, 1]).astype(np.int64)
    ok = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
    out[yi[ok], xi[ok]] = 255
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, k)
    return out


def body_width(mask: np.ndarray, body: np.ndarray, thr: float = 0.3) -> float | None:
    """Mean mask width across the torso (horizontal runs at several heights between neck and hips)."""
    hips = [j for j in (8, 11) if body[j, 2] > thr]
    if body[1, 2] <= thr or not hips:
        return None
    y0 = body[1, 1]
    y1 = float(np.mean([body[j, 1] for j in hips]))
    widths = []
    H = mask.shape[0]
    for f in np.linspace(0.35, 0.9, 6):
        y = int(round(y0 + f * (y1 - y0)))
        if 0 <= y < H:
            row = mask[y] > 127
            if row.any():
                cx = int(np.clip(round(body[1, 0]), 0, mask.shape[1] - 1))
                # the run containing the neck's x (or the widest run)
                xs = np.nonzero(row)[0]
                widths.append(float(xs.max() - xs.min() + 1) if not row[cx] else
                              float(_run_at(row, cx)))
    return float(np.median(widths)) if widths else None


def _run_at(row: np.ndarray, x: int) -> int:
    l = x
    while l > 0 and row[l - 1]:
        l -= 1
    r = x
    while r < len(row) - 1 and row[r + 1]:
        r += 1
    return r - l + 1


def predicted_masks(driving_masks: np.ndarray, driving_body: np.ndarray, aligned_body: np.ndarray,
                    width_ratio: float = 1.0, thr: float = 0.3) -> np.ndarray:
    """The source person's silhouette under the target pose: (F, H, W) uint8 {0, 255}.

    ``driving_masks`` (F, H, W) are the driving person's masks in the fitted frame, ``driving_body`` (F, 18, 3) its
    keypoints and ``aligned_body`` (F, 18, 3) the aligned target keypoints. ``width_ratio`` is source body width /
    driving body width (see :func:`pipelines.conditioning.align.compute_alignment`).
    """
    return np.stack([warp_mask(m, db, ab, width_ratio, thr) for m, db, ab in
                     zip(driving_masks, driving_body, aligned_body)]) if len(driving_masks) else \
        np.zeros((0,) + driving_masks.shape[1:], np.uint8)


def similarity_mask(mask: np.ndarray, scale: float, fx: float, fy: float, sx: float | None = None,
                    dy: float = 0.0) -> np.ndarray:
    """Scale a mask about ``(fx, fy)``, then move it down by ``dy``: ``x' = fx + sx (x - fx)``,
    ``y' = fy + scale (y - fy) + dy`` (``sx`` defaults to ``scale``), bilinear then re-binarised, so edges stay
    smooth. What the scaling brings in from beyond the frame is background: a person cut by the top edge and shrunk
    ends below the edge, as the official predicted masks do (repeating the edge row instead drew a bar up to the
    edge)."""
    import cv2

    sx = scale if sx is None else float(sx)
    m = np.array([[sx, 0.0, fx * (1 - sx)], [0.0, scale, fy * (1 - scale) + dy]], np.float64)
    h, w = mask.shape[:2]
    out = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.multiply(out > 127, 255, dtype=np.uint8)


def with_source_shape(scaled: np.ndarray, source_mask: np.ndarray, source_body: np.ndarray,
                      target_body: np.ndarray, weight: float = SOURCE_SHAPE_WEIGHT,
                      sigma: float = SOURCE_SHAPE_SIGMA) -> np.ndarray:
    """One predicted target mask: ``scaled`` (the driving mask moved by the alignment, H×W uint8) refined by the
    source person's silhouette ``source_mask`` carried from ``source_body`` to ``target_body`` (the aligned
    skeleton), see :data:`SOURCE_SHAPE_WEIGHT`. ``scaled`` unchanged when the source's silhouette cannot be
    carried (no person, no shared joints)."""
    import cv2

    rows = np.nonzero((scaled > 127).any(1))[0]
    if len(rows) == 0:
        return scaled
    warped = warp_mask(source_mask, source_body, target_body, out_size=scaled.shape[:2])
    if not warped.any():
        return scaled
    mix = (1.0 - weight) * scaled.astype(np.float32) + weight * warped.astype(np.float32)
    mix = cv2.GaussianBlur(mix, (0, 0), max(0.5, sigma * float(rows[-1] - rows[0] + 1)))
    return np.multiply(mix > 127.5, 255, dtype=np.uint8)
