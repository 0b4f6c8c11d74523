"""Pre-processing fidelity on a validation set we did not tune on, next to the two (tuned-on) fixtures.

The validation cases are the fixtures' frames under known geometric transforms, with ground truth = the official
keypoints (decoded from the official pose PNGs with :func:`~pipelines.conditioning.render.decode_pose_image`) and
masks transformed the same way; the official aligned poses / predicted masks go by :func:`ground_truth_map` (the
aligned person keeps the source's visible body scale and floor, and the driving person's horizontal place). Two parts:

* whole bodies — joint transforms (source and driving alike: the aligned pose transforms the same way): mirror
  (left/right exchanged), zoom out (smaller people), zoom in (larger, cut by the frame), shift (off-centre, partly out
  of frame), landscape letterbox and portrait pillarbox (other aspect ratios fitted into 512²); driving-only: the
  driving person smaller and off-centre, larger (cut by the bottom edge), a second (smaller) person pasted into the
  driving background; source-only: a second person pasted into the source background; time: both videos at half
  the frame rate (every other frame);
* partial bodies (:mod:`benchmarks.validation_crops`) — sources and drivings cut by the frame at the knees, thighs,
  hips and chest (bottom edge), by a side edge, by both, by crops that change over the clip (push-in, pan), and both
  people cut; reported per class (:data:`benchmarks.validation_crops.CLASSES`).

Columns (the issue's table, then hands): source pose px error, source mask IoU, aligned target pose px error,
predicted target mask IoU, and hand F1 (source and aligned): the official renders' hand strokes vs ours, as pixel
masks with a 4 px tolerance (hand strokes = the saturated pixels away from the body joint discs; limbs are drawn at
60 % intensity). Each part is printed per case, then every class's mean and worst case.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prepare_validation.py [--frames 24] [--only case-1]
[--parts fixtures,whole,crops] [--align similarity,silhouette,limbs] [--pose-track] [--cache DIR]``; with
``--cache`` (or ``$MF_BENCH_CACHE``) the poses and masks found are kept by the frames' content, so alignment modes
compare in seconds after one run (about 8 minutes at 24 frames on 2 cores).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prepare_fixtures import _load, iou, joint_metrics, shared_dir  # noqa: E402
from pipelines import conditioning as P  # noqa: E402
from pipelines import media as M  # noqa: E402
from pipelines.conditioning.align import silhouette_similarity  # noqa: E402
from pipelines.conditioning.masks import warp_mask  # noqa: E402
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


def _m3(g: Geo) -> np.ndarray:
    return np.vstack([g.m, [0, 0, 1]])


def ground_truth_map(source_mask: np.ndarray, driving_mask: np.ndarray, gs: Geo, gd: Geo) -> Geo:
    """Where one frame's official aligned pose / predicted mask goes when the source is re-framed by ``gs`` and the
    driving video by ``gd`` (``source_mask``/``driving_mask`` the official masks of the frame).

    The official rule recovered on the fixtures puts the driving skeleton, scaled to the source's stature, at the
    driving person's x and on the source person's floor line (the fixtures' bottom edge), per frame. Re-framing the
    source by ``T_s`` (scale ``z``) therefore maps the official aligned pose by ``x' = X_d + z (x - F_x)``,
    ``y' = T_s(F)_y + z (y - F_y)``, ``F`` the official fixed point of the frame (the driving silhouette's
    bottom-centre) and ``X_d`` the x of ``F`` under ``T_d``: the aligned person keeps the source's visible body scale
    (zoomed with it: the driving legs run past the frame edge) and the driving's horizontal place, and does not
    change with the driving's framing but for that place. With both re-framed alike this is the re-framing itself
    (a mirror of the driving mirrors the motion)."""
    _, fx, fy = silhouette_similarity(source_mask, driving_mask) or (1.0, SIZE / 2, SIZE - 1.0)
    ts, td = _m3(gs), _m3(gd)
    z = float(np.hypot(ts[0, 0], ts[1, 0]))
    zx = -z if td[0, 0] < 0 else z
    x_d = float((td @ [fx, fy, 1.0])[0])
    y_s = float((ts @ [fx, fy, 1.0])[1])
    return Geo([[zx, 0, x_d - zx * fx], [0, z, y_s - z * fy]], mirror=gd.mirror, window=gs.window or gd.window)


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
    # aligned poses / predicted masks: the official aligned pose of the frame under the re-framings
    # (ground_truth_map); with both re-framed alike, that re-framing itself
    kps, hands, preds = [], [], []
    for t in range(len(d["target_aligned_poses_kp"])):
        A = ground_truth_map(d["source_masks"][t], d["target_masks"][t], gs, gd)
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


def _extract(frames: np.ndarray, fps: float, cache: Path | None):
    """``(track, masks)`` of one clip; with ``cache``, kept on disk by the frames' content (the alignment can then be
    compared without running the pose model again)."""
    if cache is None:
        return P.extract_poses(frames, fps=fps, with_masks=True)
    key = hashlib.sha1(np.ascontiguousarray(frames).tobytes() + repr(float(fps)).encode()).hexdigest()[:20]
    path = cache / f"{key}.npz"
    if path.exists():
        z = np.load(path)
        return P.PoseTrack(z["body"], z["hands"], z["flags"], tuple(z["size"]), float(z["fps"])), z["masks"]
    track, masks = P.extract_poses(frames, fps=fps, with_masks=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, body=track.body, hands=track.hands, flags=track.flags, size=np.array(track.size),
                        fps=track.fps, masks=masks)
    return track, masks


def run_variant(v: dict, align: str | None = None, cache: Path | None = None, hands: bool = True,
                pose_track: bool = False) -> dict:
    """The metrics of one validation case; ``align`` an alignment mode (None: the default). ``pose_track``: the
    driving motion as a pose track (its keypoints only, no pixels: what a ``.parquet``/``.json`` driving gives)."""
    s_track, s_masks = _extract(v["src"], v["fps"], cache)
    d_track, d_masks = _extract(v["drv"], v["fps"], cache)
    if pose_track:
        transform = P.compute_alignment(s_track, d_track, mode=align)
        aligned = P.apply_alignment(d_track, transform)
        pred = np.stack([warp_mask(m, sb, ab) for m, sb, ab in zip(s_masks, s_track.body, aligned.body)])
    else:
        transform = P.compute_alignment(s_track, d_track, source_masks=s_masks, driving_masks=d_masks, mode=align)
        aligned = P.apply_alignment(d_track, transform, s_masks, d_masks, source_body=s_track.body)
        pred = P.aligned_masks(d_masks, d_track.body, transform, s_masks, source_body=s_track.body,
                               target_body=aligned.body)
    out = {"src_pose_px": joint_metrics(s_track.body, v["gt_src_kp"])[0],
           "src_mask_iou": iou(s_masks, v["gt_src_mask"]),
           "aligned_pose_px": joint_metrics(aligned.body, v["gt_al_kp"])[0],
           "pred_mask_iou": iou(pred, v["gt_pred"])}
    if hands:
        src_hand = [_hand_pixels(render_pose(b, h), b) for b, h in zip(s_track.body, s_track.hands)]
        al_hand = [_hand_pixels(render_pose(b, h), b) for b, h in zip(aligned.body, aligned.hands)]
        out["src_hand_f1"] = hand_f1(np.stack(src_hand), v["gt_src_hand"])
        out["al_hand_f1"] = hand_f1(np.stack(al_hand), v["gt_al_hand"])
    return out


KEYS = ["src_pose_px", "src_mask_iou", "aligned_pose_px", "pred_mask_iou", "src_hand_f1", "al_hand_f1"]
HEADS = {"src_pose_px": "source pose px", "src_mask_iou": "source mask IoU", "aligned_pose_px": "aligned pose px",
         "pred_mask_iou": "pred. mask IoU", "src_hand_f1": "src hand F1", "al_hand_f1": "al. hand F1"}


def _row(name: str, r: dict, keys) -> str:
    return f"{name:34s} " + " ".join(f"{r.get(k, float('nan')):15.3f}" for k in keys)


def _mean(rows: list[dict], keys) -> dict:
    return {k: float(np.nanmean([r.get(k, np.nan) for r in rows])) for k in keys}


def _print(rows: list[dict], title: str, keys=KEYS) -> None:
    print(f"\n{title}")
    print(f"{'case':34s} " + " ".join(f"{HEADS.get(k, k):>15s}" for k in keys))
    for r in rows:
        print(_row(r["case"], r, keys))
    print(_row("mean", _mean(rows, keys), keys))
    worst = max(rows, key=lambda r: r.get("aligned_pose_px", 0.0))
    print(f"{'worst aligned':34s} {worst['case']} {worst.get('aligned_pose_px', float('nan')):.3f}")


def _print_classes(groups: dict[str, list[dict]], title: str, keys=KEYS) -> None:
    print(f"\n{title}")
    print(f"{'class':34s} " + " ".join(f"{HEADS.get(k, k):>15s}" for k in keys) + "   n  worst aligned")
    for cls, rows in groups.items():
        if rows:
            w = max(r.get("aligned_pose_px", 0.0) for r in rows)
            print(_row(cls, _mean(rows, keys), keys) + f" {len(rows):3d} {w:8.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=6, help="frames per case (evenly spaced)")
    ap.add_argument("--only", default=None, help="one fixture case (e.g. case-1)")
    ap.add_argument("--variants", default=None, help="comma-separated variant name prefixes")
    ap.add_argument("--parts", default="fixtures,whole,crops",
                    help="what to run: fixtures, whole (the whole-body transforms), crops (partial bodies)")
    ap.add_argument("--align", default=None, help="comma-separated alignment modes to compare (default: the default)")
    ap.add_argument("--cache", default=os.environ.get("MF_BENCH_CACHE"),
                    help="folder keeping extracted poses/masks by content (default $MF_BENCH_CACHE; none: no cache)")
    ap.add_argument("--no-hands", action="store_true", help="skip the hand F1 columns")
    ap.add_argument("--pose-track", action="store_true",
                    help="align as for a pose-track driving (its keypoints only: no driving masks)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from benchmarks.validation_crops import CLASSES, build_crop_variant, crop_variants

    root = shared_dir() / "fixtures" / "motionfollower_cases"
    if not root.is_dir():
        print(f"fixtures not found at {root} (set MF_SHARED_DIR)")
        return 2
    cases = [c for c in sorted(root.iterdir()) if (c / "source_images").is_dir()]
    if args.only:
        cases = [c for c in cases if c.name == args.only]
    parts = set(args.parts.split(","))
    modes = args.align.split(",") if args.align else [None]
    cache = Path(args.cache) if args.cache and args.cache.lower() != "none" else None
    keys = KEYS[:4] if args.no_hands else KEYS
    wanted = (lambda name: not args.variants or any(name.startswith(p) for p in args.variants.split(",")))
    t0 = time.time()
    res = {m: {"fixtures": [], "whole": [], **{c: [] for c in CLASSES}} for m in modes}

    def run(v, label, group):
        for m in modes:
            res[m][group].append({"case": label, **run_variant(v, m, cache, hands=not args.no_hands,
                                                                pose_track=args.pose_track)})

    for case in cases:
        d = load_case(case, args.frames)
        if "fixtures" in parts:
            run(build_variant(d, None, None, ""), f"{case.name} (fixture)", "fixtures")
        if "whole" in parts:
            for name, gs, gd, extra in variants(d):
                if wanted(name):
                    run(build_variant(d, gs, gd, extra), f"{case.name} {name}", "whole")
        if "crops" in parts:
            for cv in crop_variants(d):
                if wanted(cv.name):
                    run(build_crop_variant(d, cv), f"{case.name} {cv.name}", cv.cls)
    for m in modes:
        r = res[m]
        tag = f" — align {m or 'default'}" + (" (pose-track driving)" if args.pose_track else "")
        if r["fixtures"]:
            _print(r["fixtures"], f"FIXTURES — tuned on ({args.frames} frames/case){tag}", keys)
        if r["whole"]:
            _print(r["whole"], f"VALIDATION SET, WHOLE BODIES — fixtures under known transforms{tag}", keys)
        crops = [row for c in CLASSES for row in r[c]]
        if crops:
            _print(crops, f"VALIDATION SET, PARTIAL BODIES — fixtures re-framed so the frame cuts a person{tag}", keys)
        groups = {"fixtures": r["fixtures"], "whole bodies": r["whole"], **{c: r[c] for c in CLASSES},
                  "all partial bodies": crops}
        _print_classes(groups, f"PER CLASS{tag}", keys)
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
