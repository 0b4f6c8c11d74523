"""``mf prepare``: poses, aligned poses and masks from raw videos, in the official MotionFollower input layout."""
from __future__ import annotations

import logging

from pipelines.conditioning.poses.registry import BACKENDS, DEFAULT_BACKEND
from pipelines.media.geometry import DEFAULT_FIT_MODE, FIT_MODES
from pipelines.media.timeline import DEFAULT_LENGTH_POLICY, LENGTH_POLICIES

log = logging.getLogger("mf.prepare")


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="make source/target poses, aligned poses and masks from videos",
                              description="Write the official input layout (source_images/, source_poses/, "
                                          "source_masks/, target_images/, target_poses/, target_aligned_poses/, "
                                          "predicted_masks/, keypoints.parquet) for one source and one driving input.")
    p.add_argument("--source", required=True, help="source video or frame_{i} folder (local path or fsspec URI)")
    p.add_argument("--driving", required=True, help="driving video, frame folder or pose track (.parquet/.json)")
    p.add_argument("--out", required=True, help="output folder (local path or fsspec URI)")
    p.add_argument("--size", type=int, default=512, help="square working size (default 512)")
    p.add_argument("--frames", type=int, default=None, help="at most this many output frames")
    p.add_argument("--resize", choices=FIT_MODES, default=DEFAULT_FIT_MODE,
                   help=f"keep aspect by padding or centre crop (default {DEFAULT_FIT_MODE})")
    p.add_argument("--length-policy", choices=LENGTH_POLICIES, default=DEFAULT_LENGTH_POLICY,
                   help=f"unequal lengths: trim to the shorter, loop or hold the driving motion "
                        f"(default {DEFAULT_LENGTH_POLICY})")
    p.add_argument("--pose-backend", choices=BACKENDS, default=DEFAULT_BACKEND)
    p.add_argument("--fps", type=float, default=None, help="frame rate of frame folders (default 8)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from pipelines.conditioning.layout import prepare
    from pipelines.media.errors import InputError

    bar = tqdm(desc="prepare", unit="frame", disable=None)
    try:
        summary = prepare(args.source, args.driving, args.out, size=args.size, frames=args.frames, mode=args.resize,
                          policy=args.length_policy, backend=args.pose_backend, source_fps=args.fps,
                          driving_fps=args.fps, progress=bar.update)
    except InputError as exc:
        log.error("bad input: %s", exc)
        return 2
    finally:
        bar.close()
    log.info("prepared %d frames at %.2f fps into %s (source frames without a person: %d, interpolated: %d; "
                "driving without a person: %d, interpolated: %d)", summary["frames"], summary["fps"], args.out,
                summary["source_missing"], summary["source_interpolated"], summary["driving_missing"],
                summary["driving_interpolated"])
    return 0
