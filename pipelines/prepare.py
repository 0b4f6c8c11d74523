"""Public API: poses, alignment and masks from raw videos, in the official MotionFollower input layout.

Plain functions (no Ray): the Ray stages, the ``mf prepare`` CLI and the Serve app reuse them.

Typical per-request use (the batch pipeline)::

    s_info, d_info = probe_video(src), probe_video(drv)
    n, dmap = driving_index_map(s_info, d_info, policy="trim")
    transform = reference_alignment(src, drv, dmap)            # once per request, JSON-serialisable
    for window in windows:                                     # each on a CPU worker
        arrays = prepare_window(src, drv, window_indices, [dmap[k] for k in window_indices], transform)

Every bad input raises :class:`pipelines.errors.InputError` (a ``ValueError``) naming the file and the reason.
"""
from __future__ import annotations

import io
import logging
import math
from typing import Sequence

import numpy as np

from pipelines.align import apply_alignment, compute_alignment, identity_alignment
from pipelines.errors import InputError
from pipelines.masks import aligned_masks, binarize, predicted_masks, warp_mask
from pipelines.media import (VideoInfo, fit_frame, fit_frames, iter_frames, probe_video,
                            read_fitted_frames, read_frames, release_memory)
from pipelines.poses.base import PoseExtractor, get_extractor
from pipelines.poses.keypoints import FLAG_MISSING, PoseTrack, read_pose_track, write_pose_track
from pipelines.poses.tracking import clean_track
from pipelines.render import render_poses

log = logging.getLogger(__name__)

__all__ = ["VideoInfo", "InputError", "PoseTrack", "PoseExtractor", "probe_video", "read_frames", "iter_frames",
           "fit_frame", "fit_frames", "read_fitted_frames", "driving_index_map", "get_extractor", "extract_poses",
           "read_pose_track", "write_pose_track", "compute_alignment", "apply_alignment", "identity_alignment",
           "render_poses", "person_masks", "predicted_masks", "aligned_masks", "reference_alignment", "prepare_window",
           "prepare"]

POLICIES = ("trim", "loop", "hold")
MIN_PERSON_FRACTION = 0.0  # frames may lack a person; a whole video without one is refused


def _size(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


# -- timing --------------------------------------------------------------------------------------------------------

def driving_index_map(source_info: VideoInfo, driving_info: VideoInfo | PoseTrack, policy: str = "trim",
                      frames: int | None = None) -> tuple[int, list[int]]:
    """Resample the driving motion to the source fps and reconcile lengths.

    Output frame ``k`` (at the source rate) takes driving frame ``round(k * fps_d / fps_s)``. ``policy``:
    ``"trim"`` (default) ends at the shorter of the two; ``"loop"`` runs the whole source, looping the driving
    motion; ``"hold"`` runs the whole source, holding the last driving frame. ``frames`` caps the output length.
    Returns ``(num_output_frames, mapping)``.
    """
    if policy not in POLICIES:
        raise ValueError(f"length policy must be one of {POLICIES}, not {policy!r}")
    fs = float(source_info.fps or 25.0)
    if isinstance(driving_info, PoseTrack):
        nd, fd = len(driving_info), float(driving_info.fps or fs)
    else:
        nd, fd = int(driving_info.frames), float(driving_info.fps or fs)
    ns = int(source_info.frames)
    if nd <= 0 or ns <= 0:
        return 0, []
    ratio = fd / fs
    # number of output frames covered by the driving motion at the source rate
    nd_out = max(1, int(math.floor((nd - 1) / ratio + 1e-9)) + 1)
    n = min(ns, nd_out) if policy == "trim" else ns
    if frames is not None:
        n = min(n, int(frames))
    mapping = []
    for k in range(n):
        j = int(math.floor(k * ratio + 0.5))
        if j >= nd:
            j = j % nd if policy == "loop" else nd - 1
        mapping.append(j)
    return n, mapping


# -- poses and masks -----------------------------------------------------------------------------------------------

def extract_poses(frames: np.ndarray, fps: float = 0.0, backend: str | PoseExtractor = "mediapipe",
                  with_masks: bool = False, max_gap: int = 8, smoothing: bool = True, reset: bool = True,
                  **backend_kwargs):
    """Poses of the most prominent person in fitted frames (N, H, W, 3): a cleaned :class:`PoseTrack`
    (short gaps interpolated and flagged, One-Euro temporal smoothing unless ``smoothing=False``), plus (N, H, W)
    uint8 masks if asked. MediaPipe's own landmark smoothing is off (it lags at low frame rates)."""
    ext = backend if isinstance(backend, PoseExtractor) else get_extractor(backend, **backend_kwargs)
    if reset:  # the frames are one clip: do not carry tracking state over from another video
        ext.reset()
    body, hands, prob = ext.extract(frames)
    n, h, w = frames.shape[:3]
    track = PoseTrack(body, hands, np.zeros(n, np.int32), (h, w), fps)
    track = clean_track(track, max_gap=max_gap, smoothing=smoothing)
    if not with_masks:
        return track
    if prob is None:
        prob = get_extractor("mediapipe", mirror=False).extract(frames)[2]  # segmentation only
    masks = binarize(prob)
    masks[track.missing] = 0
    return track, masks


def person_masks(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB → (N, H, W) uint8 {0, 255}: the most prominent person's silhouette."""
    from pipelines.masks import person_masks as _pm

    return _pm(frames)


def _load_driving_track(driving) -> PoseTrack | None:
    if isinstance(driving, PoseTrack):
        return driving
    if isinstance(driving, str) and driving.lower().endswith((".parquet", ".json")):
        return read_pose_track(driving)
    return None


def reference_alignment(source: str, driving, source_indices: Sequence[int] | None = None,
                        driving_indices: Sequence[int] | None = None, size=512, mode: str = "pad",
                        ref_frames: int = 4, backend: str = "mediapipe") -> dict:
    """Compute the per-request alignment transform from the first ``ref_frames`` frames of each input."""
    size = _size(size)
    si = list(source_indices[:ref_frames]) if source_indices is not None else list(range(ref_frames))
    s_info = probe_video(source)
    si = [i for i in si if i < s_info.frames] or [0]
    s_frames = read_fitted_frames(source, si, size, mode, info=s_info)
    s_track, s_masks = extract_poses(s_frames, s_info.fps, backend, with_masks=True)
    get_extractor(backend).reset()
    track = _load_driving_track(driving)
    if track is not None:
        di = list(driving_indices[:ref_frames]) if driving_indices is not None else list(range(ref_frames))
        d_track = track.take([i for i in di if i < len(track)] or [0]).rescaled(size, mode)
        transform = compute_alignment(s_track, d_track, ref_frames)
    else:
        d_info = probe_video(driving)
        di = list(driving_indices[:ref_frames]) if driving_indices is not None else list(range(ref_frames))
        di = [i for i in di if i < d_info.frames] or [0]
        d_frames = read_fitted_frames(driving, di, size, mode, info=d_info)
        d_track, d_masks = extract_poses(d_frames, d_info.fps, backend, with_masks=True)
        get_extractor(backend).reset()
        transform = compute_alignment(s_track, d_track, ref_frames, s_masks, d_masks)
    del s_frames
    release_memory()
    if s_track.missing.all():
        raise InputError(source, "no person found in the reference frames of the source")
    return transform


def prepare_window(source_uri: str, driving, source_indices: Sequence[int], driving_indices: Sequence[int],
                   transform: dict | None, size=512, mode: str = "pad", backend: str = "mediapipe",
                   source_info: VideoInfo | None = None, driving_info: VideoInfo | None = None,
                   with_driving_frames: bool = False) -> dict:
    """Everything the editing model needs for one window.

    ``driving`` is a video/frames URI or a :class:`PoseTrack` (or a pose-track file URI). Returns numpy arrays:
    ``source_frames`` (F,H,W,3) uint8, ``source_poses`` (F,H,W,3) uint8 renders, ``target_poses`` (aligned renders),
    ``source_masks`` and ``target_masks`` (F,H,W) uint8 {0,255}, ``source_keypoints`` (F,18,3),
    ``target_keypoints`` (aligned, F,18,3), ``source_hands``/``target_hands`` (F,2,21,3), ``source_flags`` and
    ``driving_flags`` (F,) int32 (bit 0 interpolated, bit 1 missing), and with ``with_driving_frames`` the fitted
    driving frames and raw driving poses/masks.
    """
    size = _size(size)
    if len(source_indices) != len(driving_indices):
        raise ValueError("source_indices and driving_indices must have the same length")
    transform = transform or identity_alignment(size)
    ext = get_extractor(backend)
    s_frames = read_fitted_frames(source_uri, source_indices, size, mode, info=source_info)
    ext.reset()
    s_track, s_masks = extract_poses(s_frames, getattr(source_info, "fps", 0.0), ext, with_masks=True)
    track = _load_driving_track(driving)
    out = {}
    if track is not None:
        d_track = track.take(driving_indices).rescaled(size, mode)
        d_track = clean_track(d_track, smoothing=False)
        d_masks = None
    else:
        d_frames = read_fitted_frames(driving, driving_indices, size, mode, info=driving_info)
        ext.reset()
        d_track, d_masks = extract_poses(d_frames, getattr(driving_info, "fps", 0.0), ext, with_masks=True)
        if with_driving_frames:
            out["driving_frames"] = d_frames
            out["driving_masks"] = d_masks
    ext.reset()
    if d_masks is not None:
        aligned = apply_alignment(d_track, transform, s_masks, d_masks)
        if transform.get("mode", "bones") in ("silhouette", "ground"):
            t_masks = aligned_masks(d_masks, d_track.body, transform, s_masks)
        else:
            t_masks = predicted_masks(d_masks, d_track.body, aligned.body, float(transform.get("width_ratio", 1.0)))
    else:
        aligned = apply_alignment(d_track, transform)
        # no driving pixels: carry the source silhouette from the source skeleton to the aligned target skeleton
        t_masks = np.stack([warp_mask(m, sb, ab) for m, sb, ab in zip(s_masks, s_track.body, aligned.body)])
    out.update({
        "source_frames": s_frames,
        "source_poses": render_poses(s_track, size),
        "target_poses": render_poses(aligned, size),
        "driving_poses": render_poses(d_track, size),
        "source_masks": s_masks,
        "target_masks": t_masks,
        "source_keypoints": s_track.body, "source_hands": s_track.hands,
        "target_keypoints": aligned.body, "target_hands": aligned.hands,
        "driving_keypoints": d_track.body, "driving_hands": d_track.hands,
        "source_flags": s_track.flags, "driving_flags": d_track.flags,
    })
    release_memory()
    return out


# -- whole-request preparation in the official layout ------------------------------------------------------------

LAYOUT = ["source_images", "source_poses", "source_masks", "target_images", "target_poses", "target_aligned_poses",
          "predicted_masks"]


def _write_png(fs, path: str, arr: np.ndarray, fmt: str = "PNG") -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())


def prepare(source: str, driving: str, out_dir: str, size=512, frames: int | None = None, mode: str = "pad",
            policy: str = "trim", backend: str = "mediapipe", window: int = 24, source_fps: float | None = None,
            driving_fps: float | None = None, progress=None) -> dict:
    """Prepare one edit in the official folder layout under ``out_dir`` (fsspec URI allowed).

    Writes ``source_images/`` (jpg), ``source_poses/``, ``source_masks/``, ``target_images/`` (jpg; only for a driving
    video), ``target_poses/``, ``target_aligned_poses/``, ``predicted_masks/`` (png), files named ``frame_{i}``, and
    ``keypoints.parquet`` (one row per output frame). Processes ``window`` frames at a time (memory O(window)).
    Returns a summary dict (frames, fps, flagged frames, per-stage seconds).
    """
    import time

    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = _size(size)
    s_info = probe_video(source, fps=source_fps)
    track = _load_driving_track(driving)
    d_info = track if track is not None else probe_video(driving, fps=driving_fps)
    n, dmap = driving_index_map(s_info, d_info, policy, frames)
    if n == 0:
        raise InputError(source, "nothing to prepare (no frames)")
    transform = reference_alignment(source, driving, list(range(n)), dmap, size, mode, backend=backend)
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
    import json

    table = pa.table(rows).replace_schema_metadata({
        "mf_pose_version": "1", "width": str(size[1]), "height": str(size[0]), "fps": repr(float(s_info.fps)),
        "format": "openpose18+hands21", "alignment": json.dumps(transform), "source": str(source),
        "driving": str(driving) if not isinstance(driving, PoseTrack) else "<pose track>"})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    with fs.open(f"{root}/keypoints.parquet", "wb") as f:
        f.write(buf.getvalue())
    s_flags = np.array(rows["source_flags"])
    d_flags = np.array(rows["driving_flags"])
    summary = {"frames": n, "fps": s_info.fps, "size": list(size), "transform": transform,
               "source_missing": int(((s_flags & FLAG_MISSING) != 0).sum()),
               "source_interpolated": int(((s_flags & 1) != 0).sum()),
               "driving_missing": int(((d_flags & FLAG_MISSING) != 0).sum()),
               "driving_interpolated": int(((d_flags & 1) != 0).sum()), "seconds": timings}
    if summary["source_missing"] == n:
        raise InputError(source, "no person found in any frame")
    return summary
