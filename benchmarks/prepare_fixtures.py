"""Pre-processing fidelity against the official MotionFollower sample inputs.

For each fixture case (../shared/fixtures/motionfollower_cases or $MF_SHARED_DIR/fixtures/...), runs the prepare
functions from the case's ``source_images`` and ``target_images`` and prints:

1. source poses vs ``source_poses``: mean joint distance (px at 512²) over joints visible in both, visibility
   disagreement;
2. source masks vs ``source_masks``: mean IoU;
3. aligned target poses vs ``target_aligned_poses``: mean joint distance (and the unaligned baseline; and our
   driving poses vs ``target_poses``, which bounds it: the official alignment is an exact per-frame similarity);
4. predicted target masks vs ``predicted_masks``: mean IoU (and the plain driving-mask baseline).

Official keypoints are decoded from the pose PNGs by joint-disc colour
(:func:`~pipelines.conditioning.render.decode_pose_image`).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import conditioning as P  # noqa: E402
from pipelines import media as M  # noqa: E402
from pipelines.conditioning.render import decode_pose_image  # noqa: E402


def shared_dir() -> Path:
    env = os.environ.get("MF_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def _load(folder: Path, kind: str) -> np.ndarray:
    from PIL import Image

    files = sorted(folder.iterdir(), key=lambda p: int(p.stem.split("_")[1]))
    conv = "L" if kind == "mask" else "RGB"
    return np.stack([np.asarray(Image.open(f).convert(conv)) for f in files])


def joint_metrics(ours: np.ndarray, ref: np.ndarray, thr: float = 0.3):
    vo, vr = ours[..., 2] > thr, ref[..., 2] > 0
    both = vo & vr
    d = np.hypot(*(ours[both][:, :2] - ref[both][:, :2]).T)
    return float(d.mean()) if len(d) else float("nan"), float((vo != vr).mean())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 127, b > 127
    return float(np.mean([(x & y).sum() / max(1, (x | y).sum()) for x, y in zip(a, b)]))


def run_case(case: Path, align: str | None = None) -> dict:
    src = str(case / "source_images")
    drv = str(case / "target_images")
    size = (512, 512)
    s_info, d_info = M.probe_video(src), M.probe_video(drv)
    s_frames = M.fit_frames(M.read_frames(src, range(s_info.frames)), size)
    d_frames = M.fit_frames(M.read_frames(drv, range(d_info.frames)), size)
    s_track, s_masks = P.extract_poses(s_frames, fps=s_info.fps, with_masks=True)
    d_track, d_masks = P.extract_poses(d_frames, fps=d_info.fps, with_masks=True)
    transform = P.compute_alignment(s_track, d_track, source_masks=s_masks, driving_masks=d_masks, mode=align)
    aligned = P.apply_alignment(d_track, transform, s_masks, d_masks, source_body=s_track.body)
    pred = P.aligned_masks(d_masks, d_track.body, transform, s_masks, source_body=s_track.body,
                           target_body=aligned.body)
    ref_tgt = np.stack([decode_pose_image(im) for im in _load(case / "target_poses", "rgb")])
    drv_px, _ = joint_metrics(d_track.body, ref_tgt)

    ref_src = np.stack([decode_pose_image(im) for im in _load(case / "source_poses", "rgb")])
    ref_al = np.stack([decode_pose_image(im) for im in _load(case / "target_aligned_poses", "rgb")])
    m1, vis = joint_metrics(s_track.body, ref_src)
    m3, _ = joint_metrics(aligned.body, ref_al)
    m3_base, _ = joint_metrics(d_track.body, ref_al)
    gt_src, gt_pred = _load(case / "source_masks", "mask"), _load(case / "predicted_masks", "mask")
    return {"case": case.name, "src_pose_px": m1, "src_vis_disagree": vis, "src_mask_iou": iou(s_masks, gt_src),
            "driving_pose_px": drv_px, "aligned_pose_px": m3, "unaligned_pose_px": m3_base,
            "pred_mask_iou": iou(pred, gt_pred),
            "driving_mask_iou": iou(d_masks, gt_pred)}


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    root = shared_dir() / "fixtures" / "motionfollower_cases"
    if not root.is_dir():
        print(f"fixtures not found at {root} (set MF_SHARED_DIR)")
        return 2
    align = sys.argv[1] if len(sys.argv) > 1 else None  # an alignment mode (default: the default)
    rows = [run_case(c, align) for c in sorted(root.iterdir()) if (c / "source_images").is_dir()]
    keys = ["src_pose_px", "src_vis_disagree", "src_mask_iou", "driving_pose_px", "aligned_pose_px",
            "unaligned_pose_px",
            "pred_mask_iou", "driving_mask_iou"]
    print(f"{'case':8s} " + " ".join(f"{k:>17s}" for k in keys))
    for r in rows:
        print(f"{r['case']:8s} " + " ".join(f"{r[k]:17.3f}" for k in keys))
    print(f"{'mean':8s} " + " ".join(f"{np.mean([r[k] for r in rows]):17.3f}" for k in keys))
    print("targets: src_pose_px<=6, src_vis_disagree<=0.05, src_mask_iou>=0.92, aligned_pose_px<=10, "
          "pred_mask_iou>=0.80")
    return 0


if __name__ == "__main__":
    sys.exit(main())
