"""``mf prepare``: one edit's conditioning written in the official MotionFollower folder layout (fsspec URIs).

Folders ``source_images/`` (jpg), ``source_poses/``, ``source_masks/``, ``target_images/`` (jpg; driving videos only),
``target_poses/``, ``target_aligned_poses/``, ``predicted_masks/`` (png), files named ``frame_{i}``, plus
``keypoints.parquet`` (one row per output frame). Processed window by window, so memory is O(window).
"""
from __future__ import annotations

import io
import json
import time

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.conditioning.poses.keypoints import FLAG_INTERPOLATED, FLAG_MISSING, PoseTrack
from pipelines.conditioning.poses.registry import DEFAULT_BACKEND
from pipelines.conditioning.window_inputs import (
    as_size,
    driving_index_map,
    load_driving_track,
    prepare_window,
    reference_alignment,
)
from pipelines.media.errors import InputError
from pipelines.media.geometry import DEFAULT_FIT_MODE
from pipelines.media.timeline import DEFAULT_LENGTH_POLICY
from pipelines.media.video import probe_video

LAYOUT = ["source_images", "source_poses", "source_masks", "target_images", "target_poses", "target_aligned_poses",
          "predicted_masks"]


def _write_png(fs, path: str, arr: np.ndarray, fmt: str = "PNG") -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())


def prepare(source: str, driving: str, out_dir: str, size=512, frames: int | None = None,
            mode: str = DEFAULT_FIT_MODE, policy: str = DEFAULT_LENGTH_POLICY, backend: str = DEFAULT_BACKEND,
            window: int = 24, source_fps: float | None = None, driving_fps: float | None = None, progress=None) -> dict:
    """Prepare one edit in the official folder layout under ``out_dir`` (fsspec URI allowed).

    Writes ``source_images/`` (jpg), ``source_poses/``, ``source_masks/``, ``target_images/`` (jpg; only for a driving
    video), ``target_poses/``, ``target_aligned_poses/``, ``predicted_masks/`` (png), files named ``frame_{i}``, and
    ``keypoints.parquet`` (one row per output frame). Processes ``window`` frames at a time (memory O(window)).
    Returns a summary dict (frames, fps, flagged frames, per-stage seconds).
    """
    size = as_size(size)
    s_info = probe_video(source, fps=source_fps)
    track = load_driving_track(driving)
    d_info = track if track is not None else probe_video(driving, fps=driving_fps)
    n, dmap = driving_index_map(s_info, d_info, policy, frames)
    if n == 0:
        raise InputError(source, "nothing to prepare (no frames)")
    transform = reference_alignment(source, driving, list(range(n)), dmap, size, mode, backend=backend,
                                    source_info=s_info, driving_info=None if track is not None else d_info)
    fs, root = fsspec.core.url_to_fs(str(out_dir))
    for d in LAYOUT:
        if d == "target_images" and track is not None:
            continue
        fs.makedirs(f"{root}/{d}", exist_ok=True)
    rows = {k: [] for k in ("frame", "source_frame", "driving_frame", "source_body", "source_hands", "target_body",
                            "target_hands", "aligned_body", "aligned_hands", "source_flags", "driving_flags")}
    timings = {"prepare": 0.0, "write": 0.0}
    for start in range(0, n, window):
        ks = list(range(start, min(n, start + window)))
        t0 = time.perf_counter()
        w = prepare_window(source, track if track is not None else driving, ks, [dmap[k] for k in ks], transform,
                           size, mode, backend, s_info, None if track is not None else d_info,
                           with_driving_frames=track is None)
        t1 = time.perf_counter()
        for j, k in enumerate(ks):
            _write_png(fs, f"{root}/source_images/frame_{k}.jpg", w["source_frames"][j], "JPEG")
            _write_png(fs, f"{root}/source_poses/frame_{k}.png", w["source_poses"][j])
            _write_png(fs, f"{root}/source_masks/frame_{k}.png", w["source_masks"][j])
            if "driving_frames" in w:
                _write_png(fs, f"{root}/target_images/frame_{k}.jpg", w["driving_frames"][j], "JPEG")
            _write_png(fs, f"{root}/target_poses/frame_{k}.png", w["driving_poses"][j])
            _write_png(fs, f"{root}/target_aligned_poses/frame_{k}.png", w["target_poses"][j])
            _write_png(fs, f"{root}/predicted_masks/frame_{k}.png", w["target_masks"][j])
            rows["frame"].append(k)
            rows["source_frame"].append(k)
            rows["driving_frame"].append(dmap[k])
            rows["source_body"].append(w["source_keypoints"][j].reshape(-1).tolist())
            rows["source_hands"].append(w["source_hands"][j].reshape(-1).tolist())
            rows["target_body"].append(w["driving_keypoints"][j].reshape(-1).tolist())
            rows["target_hands"].append(w["driving_hands"][j].reshape(-1).tolist())
            rows["aligned_body"].append(w["target_keypoints"][j].reshape(-1).tolist())
            rows["aligned_hands"].append(w["target_hands"][j].reshape(-1).tolist())
            rows["source_flags"].append(int(w["source_flags"][j]))
            rows["driving_flags"].append(int(w["driving_flags"][j]))
        timings["prepare"] += t1 - t0
        timings["write"] += time.perf_counter() - t1
        if progress is not None:
            progress(len(ks))
    table = pa.table(rows).replace_schema_metadata({
        "mf_pose_version": "1", "width": str(size[1]), "height": str(size[0]), "fps": repr(float(s_info.fps)),
        "format": "openpose18+hands21", "alignment": json.dumps(transform.to_dict()), "source": str(source),
        "driving": str(driving) if not isinstance(driving, PoseTrack) else "<pose track>"})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    with fs.open(f"{root}/keypoints.parquet", "wb") as f:
        f.write(buf.getvalue())
    s_flags = np.array(rows["source_flags"])
    d_flags = np.array(rows["driving_flags"])
    summary = {"frames": n, "fps": s_info.fps, "size": list(size), "transform": transform.to_dict(),
               "source_missing": int(((s_flags & FLAG_MISSING) != 0).sum()),
               "source_interpolated": int(((s_flags & FLAG_INTERPOLATED) != 0).sum()),
               "driving_missing": int(((d_flags & FLAG_MISSING) != 0).sum()),
               "driving_interpolated": int(((d_flags & FLAG_INTERPOLATED) != 0).sum()), "seconds": timings}
    if summary["source_missing"] == n:
        raise InputError(source, "no person found in any frame")
    return summary
