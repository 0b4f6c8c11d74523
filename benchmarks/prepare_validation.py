"""Pre-processing fidelity on a validation set we did not tune on, next to the two (tuned-on) fixtures.

The validation cases are the fixtures' frames under known geometric transforms, with ground truth = the official
keypoints (decoded from the official pose PNGs with :func:`~pipelines.conditioning.render.decode_pose_image`) and
masks transformed the same way:

* joint transforms (source and driving alike; the official alignment rule — a per-frame uniform scaling about the
  driving silhouette's bottom-centre by the silhouette height ratio — is equivariant to them, so the official
  aligned poses / predicted masks transform the same way): mirror (left/right exchanged), zoom out (smaller
  people), zoom in (larger, cut by the frame), shift (off-centre, partly out of frame), landscape letterbox and
  portrait pillarbox (other aspect ratios fitted into 512²);
* driving-only transforms: driving person smaller and off-centre (scaled about its bottom-centre, then shifted —
  the official aligned pose then moves with the driving bottom-centre), driving person larger (cut by the
  bottom edge), and a second (smaller) person pasted into the driving background (ground truth unchanged);
* source-only: a second (smaller) person pasted into the source background (ground truth unchanged);
* time: both videos at half the frame rate (every other frame).

Columns: source pose px error, source mask IoU, aligned pose px error, predicted mask IoU, and hand F1 (source and
aligned): the official renders' hand strokes vs ours, as pixel masks with a 4 px tolerance (hand strokes = the
saturated pixels away from the body joint discs; limbs are drawn at 60 % intensity).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prepare_validation.py [--frames 6] [--only case-1]``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prepare_fixtures import _load, iou, joint_metrics, shared_dir  # noqa: E402
from pipelines import conditioning as P  # noqa: E402
from pipelines import media as M  # noqa: E402
from pipelines.conditioning.align import silhouette_similarity  # noqa: E402
from pipelines.conditioning.render import decode_pose_image, render_pose  # noqa: E402

SIZE = 512
FLIP_PERM = np.arange(18)
for _a, _b in ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17)):
    FLIP_PERM[_a], FLIP_PERM[_b] = _b, _a


class Geo:
    """A 2x3 affine on 512² frames, an optional mirror (keypoint left/right exchange) and a content window (rows /
    cols outside it are black bars, as a letterboxed other-aspect video)."""

    def __init__(self, m=None, mirror=False, window=None):
        self.m = np.array(m if m is not None else [[1, 0, 0], [0, 1, 0]], np.float64)
        self.mirror = mirror
        self.window = window  # (y0, y1, x0, x1)

    def image(self, img: np.ndarray, nearest: bool = False) -> np.ndarray:
        import cv2

        out = cv2.warpAffine(img, self.m, (SIZE, SIZE), flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT)
        if self.window is not None:
            y0, y1, x0, x1 = self.window
            keep = np.zeros(out.shape[:2], bool)
            keep[y0:y1, x0:x1] = True
            out[~keep] = 0
        return out

    def points(self, pts: np.ndarray) -> np.ndarray:
        """(..., 3) [x, y, score] → transformed; points leaving the frame / window get score 0."""
        out = pts.copy()
        xy = pts[..., :2] @ self.m[:, :2].T + self.m[:, 2]
        out[..., :2] = xy
        y0, y1, x0, x1 = self.window or (0, SIZE, 0, SIZE)
        inside = (xy[..., 0] >= x0) & (xy[..., 0] < x1) & (xy[..., 1] >= y0) & (xy[..., 1] < y1)
        out[..., 2] = np.where(inside, out[..., 2], 0)
        if self.mirror:
            out = out[..., FLIP_PERM, :] if out.shape[-2] == 18 else out
        return out


def _affine(scale=1.0, about=(256, 256), shift=(0, 0), mirror=False):
    s, (cx, cy), (tx, ty) = scale, about, shift
    sx = -s if mirror else s
    return [[sx, 0, cx - sx * cx + tx], [0, s, cy - s * cy + ty]]


def _sim3(s: float, fx: float, fy: float) -> np.ndarray:
    """3x3 uniform scaling by ``s`` about (fx, fy)."""
    return np.array([[s, 0, fx - s * fx], [0, s, fy - s * fy], [0, 0, 1]], np.float64)


def _bottom_centre(mask: np.ndarray) -> tuple[float, float]:
    fg = mask > 127
    rows, cols = np.nonzero(fg.any(1))[0], np.nonzero(fg.any(0))[0]
    if not len(rows):
        return SIZE / 2, SIZE - 1
    return float(cols[0] + cols[-1]) / 2, float(rows[-1])


def _hand_pixels(img: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Pixels of the hand strokes of a pose render: saturated colours away from the body joint discs."""
    import cv2

    sat = img.max(-1) >= 200
    discs = np.zeros(img.shape[:2], np.uint8)
    for x, y, c in body:
        if c > 0:
            cv2.circle(discs, (int(round(x)), int(round(y))), 7, 1, -1)
    return sat & (discs == 0)


def hand_f1(ours: np.ndarray, ref: np.ndarray, tol: int = 4) -> float:
    """Mean F1 over frames of hand-stroke pixel masks with ``tol`` px tolerance (1 when both have none)."""
    import cv2

    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1))
    f1s = []
    for a, b in zip(ours, ref):
        if not a.any() and not b.any():
            f1s.append(1.0)
            continue
        da, db = cv2.dilate(a.astype(np.uint8), k) > 0, cv2.dilate(b.astype(np.uint8), k) > 0
        p = (a & db).sum() / max(1, a.sum())
        r = (b & da).sum() / max(1, b.sum())
        f1s.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    return float(np.mean(f1s))


def load_case(case: Path, frames: int) -> dict:
    n = len(list((case / "source_images").iterdir()))
    idx = np.linspace(0, n - 1, frames).round().astype(int) if frames < n else np.arange(n)
    info = M.probe_video(str(case / "source_images"))
    d = {"fps": float(info.fps) * frames / n if frames < n else float(info.fps)}
    for key, kind in (("source_images", "rgb"), ("target_images", "rgb"), ("source_poses", "rgb"),
                      ("target_poses", "rgb"), ("target_aligned_poses", "rgb"), ("source_masks", "mask"),
                      ("target_masks", "mask"), ("predicted_masks", "mask")):
        d[key] = _load(case / key, kind)[idx]
    for key in ("source_poses", "target_poses", "target_aligned_poses"):
        d[key + "_kp"] = np.stack([decode_pose_image(im) for im in d[key]])
        d[key + "_hand"] = np.stack([_hand_pixels(im, kp) for im, kp in zip(d[key], d[key + "_kp"])])
    return d


def _paste_person(dst: np.ndarray, src: np.ndarray, mask: np.ndarray, scale: float, at_x: float) -> tuple:
    """Paste ``src``'s masked person scaled by ``scale`` with its bottom-centre at (at_x, 511); returns
    (image, pasted-person mask)."""
    import cv2

    bx, by = _bottom_centre(mask)
    m = np.array(_affine(scale, (bx, by), (at_x - bx, SIZE - 1 - by)), np.float64)
    person = cv2.warpAffine(src, m, (SIZE, SIZE), flags=cv2.INTER_AREA)
    pm = cv2.warpAffine(mask, m, (SIZE, SIZE), flags=cv2.INTER_NEAREST) > 127
    out = dst.copy()
    out[pm] = person[pm]
    return out, pm


def variants(d: dict) -> list[tuple[str, Geo | None, Geo | None, str]]:
    """(name, source geometry, driving geometry, extra) — None = unchanged."""
    bx = np.mean([_bottom_centre(m)[0] for m in d["target_masks"]])
    side = 90 if bx < SIZE / 2 else -90
    top = min(np.nonzero((m > 127).any(1))[0][0] for m in d["target_masks"])
    joint = [("mirror", Geo(_affine(about=(255.5, 255.5), mirror=True), mirror=True)),
             ("zoom-out 0.65", Geo(_affine(0.65))),
             ("zoom-in 1.3 (cut)", Geo(_affine(1.3, (256, 40)))),
             ("shift +80/-20", Geo(_affine(1.0, shift=(80, -20)))),
             ("landscape 16:9", Geo(_affine(0.5625), window=(112, 400, 0, SIZE))),
             ("portrait 9:16", Geo(window=(0, SIZE, 112, 400)))]
    return [(n, g, g, "") for n, g in joint] + [
        ("drv small+off-centre", None, Geo(_affine(0.7, (bx, SIZE - 1), (side, 0))), ""),
        ("drv large (cut)", None, Geo(_affine(1.25, (bx, top))), ""),
        ("drv bystander", None, None, "bystander"),
        ("src bystander", None, None, "src-bystander"),
        ("half frame rate", None, None, "half-fps"),
    ]


def build_variant(d: dict, gs: Geo | None, gd: Geo | None, extra: str) -> dict:
    """Transformed inputs and ground truth."""
    if extra == "half-fps":  # both videos at half the frame rate: every other frame (the smoothing sees larger steps)
        d = {k: (x / 2 if k == "fps" else x[::2]) for k, x in d.items()}
    ident = Geo()
    gs, gd = gs or ident, gd or ident
    v = {"fps": d["fps"]}
    v["src"] = np.stack([gs.image(im) for im in d["source_images"]])
    v["drv"] = np.stack([gd.image(im) for im in d["target_images"]])
    v["gt_src_kp"] = gs.points(d["source_poses_kp"])
    v["gt_src_mask"] = np.stack([gs.image(m, nearest=True) for m in d["source_masks"]])
    v["gt_src_hand"] = np.stack([gs.image(h.astype(np.uint8), nearest=True) > 0 for h in d["source_poses_hand"]])
    # aligned poses / predicted masks: the official rule (recovered on the fixtures to < 1 px: per frame, scale the
    # driving skeleton by the silhouette-height ratio about the driving silhouette's bottom-centre) applied to the
    # transformed official masks: aligned' = V(T_d(p)), p = U(aligned) the official driving pose, so the official
    # aligned pose / predicted mask / hand strokes map by A = V T_d U.
    kps, hands, preds = [], [], []
    for t in range(len(d["target_aligned_poses_kp"])):
        sm, tm = d["source_masks"][t], d["target_masks"][t]
        s0, fx0, fy0 = silhouette_similarity(sm, tm) or (1.0, 0.0, 0.0)
        s1, fx1, fy1 = silhouette_similarity(v["gt_src_mask"][t], gd.image(tm, nearest=True)) or (1.0, 0.0, 0.0)
        U = _sim3(1 / s0, fx0, fy0)
        V = _sim3(s1, fx1, fy1)
        Td = np.vstack([gd.m, [0, 0, 1]])
        A = Geo((V @ Td @ U)[:2], mirror=gd.mirror, window=gd.window)
        kps.append(A.points(d["target_aligned_poses_kp"][t]))
        hands.append(A.image(d["target_aligned_poses_hand"][t].astype(np.uint8), nearest=True) > 0)
        preds.append(A.image(d["predicted_masks"][t], nearest=True))
    v["gt_al_kp"], v["gt_al_hand"], v["gt_pred"] = np.stack(kps), np.stack(hands), np.stack(preds)
    if extra == "bystander":  # a smaller second person (the source person, another frame) at the side, behind
        v["drv"] = _with_bystander(v["drv"], d["target_masks"], d["source_images"], d["source_masks"])
    if extra == "src-bystander":  # the same in the source video, with the driving person as the bystander
        v["src"] = _with_bystander(v["src"], d["source_masks"], d["target_images"], d["target_masks"])
    return v


def _with_bystander(frames: np.ndarray, masks, other_images, other_masks) -> np.ndarray:
    bx = np.mean([_bottom_centre(m)[0] for m in masks])
    at = SIZE * 0.12 if bx > SIZE / 2 else SIZE * 0.88
    out = []
    for t in range(len(frames)):
        im, _ = _paste_person(frames[t], other_images[-1 - t], other_masks[-1 - t], 0.55, at)
        keep = masks[t] > 127  # the main person stays in front
        im[keep] = frames[t][keep]
        out.append(im)
    return np.stack(out)


def run_variant(v: dict) -> dict:
    s_track, s_masks = P.extract_poses(v["src"], fps=v["fps"], with_masks=True)
    d_track, d_masks = P.extract_poses(v["drv"], fps=v["fps"], with_masks=True)
    transform = P.compute_alignment(s_track, d_track, source_masks=s_masks, driving_masks=d_masks)
    aligned = P.apply_alignment(d_track, transform, s_masks, d_masks)
    pred = P.aligned_masks(d_masks, d_track.body, transform, s_masks, source_body=s_track.body,
                           target_body=aligned.body)
    src_hand = [_hand_pixels(render_pose(b, h), b) for b, h in zip(s_track.body, s_track.hands)]
    al_hand = [_hand_pixels(render_pose(b, h), b) for b, h in zip(aligned.body, aligned.hands)]
    return {"src_pose_px": joint_metrics(s_track.body, v["gt_src_kp"])[0],
            "src_mask_iou": iou(s_masks, v["gt_src_mask"]),
            "aligned_pose_px": joint_metrics(aligned.body, v["gt_al_kp"])[0],
            "pred_mask_iou": iou(pred, v["gt_pred"]),
            "src_hand_f1": hand_f1(np.stack(src_hand), v["gt_src_hand"]),
            "al_hand_f1": hand_f1(np.stack(al_hand), v["gt_al_hand"])}


KEYS = ["src_pose_px", "src_mask_iou", "aligned_pose_px", "pred_mask_iou", "src_hand_f1", "al_hand_f1"]


def _print(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(f"{'case':34s} " + " ".join(f"{k:>15s}" for k in KEYS))
    for r in rows:
        print(f"{r['case']:34s} " + " ".join(f"{r[k]:15.3f}" for k in KEYS))
    print(f"{'mean':34s} " + " ".join(f"{np.nanmean([r[k] for r in rows]):15.3f}" for k in KEYS))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=6, help="frames per case (evenly spaced)")
    ap.add_argument("--only", default=None, help="one fixture case (e.g. case-1)")
    ap.add_argument("--variants", default=None, help="comma-separated variant name prefixes")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = shared_dir() / "fixtures" / "motionfollower_cases"
    if not root.is_dir():
        print(f"fixtures not found at {root} (set MF_SHARED_DIR)")
        return 2
    cases = [c for c in sorted(root.iterdir()) if (c / "source_images").is_dir()]
    if args.only:
        cases = [c for c in cases if c.name == args.only]
    tuned, held = [], []
    t0 = time.time()
    for case in cases:
        d = load_case(case, args.frames)
        r = run_variant(build_variant(d, None, None, ""))
        tuned.append({"case": f"{case.name} (fixture)", **r})
        for name, gs, gd, extra in variants(d):
            if args.variants and not any(name.startswith(p) for p in args.variants.split(",")):
                continue
            r = run_variant(build_variant(d, gs, gd, extra))
            held.append({"case": f"{case.name} {name}", **r})
    _print(tuned, f"FIXTURES — tuned on ({args.frames} frames/case)")
    if held:
        _print(held, "VALIDATION SET — not tuned on (fixtures under known transforms)")
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
