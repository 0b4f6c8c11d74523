"""Per-window conditioning: the length map, the per-request alignment and the arrays the model needs for a window.

Plain functions (no Ray): the batch stages, ``mf prepare`` (:mod:`pipelines.conditioning.layout`) and Serve reuse them.

Typical per-request use (the batch pipeline)::

    s_info, d_info = probe_video(src), probe_video(drv)
    n, dmap = driving_index_map(s_info, d_info, policy="trim")
    transform = reference_alignment(src, drv, dmap)            # once per request: an AlignTransform
    for window in windows:                                     # each on a CPU worker
        arrays = prepare_window(src, drv, window_indices, [dmap[k] for k in window_indices], transform)

Every bad input raises :class:`pipelines.media.errors.InputError` (a ``ValueError``) naming the file and the reason.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from pipelines.conditioning.align import (
    AlignTransform,
    aligned_masks,
    apply_alignment,
    compute_alignment,
    identity_alignment,
)
from pipelines.conditioning.masks import binarize, predicted_masks, warp_mask
from pipelines.conditioning.poses import PoseExtractor, get_extractor
from pipelines.conditioning.poses.keypoints import POSE_TRACK_SUFFIXES, PoseTrack, read_pose_track
from pipelines.conditioning.poses.registry import DEFAULT_BACKEND
from pipelines.conditioning.poses.tracking import clean_track
from pipelines.conditioning.render import render_poses
from pipelines.media import timeline
from pipelines.media.errors import InputError
from pipelines.media.geometry import DEFAULT_FIT_MODE
from pipelines.media.video import VideoInfo, probe_video, read_fitted_frames, release_memory

log = logging.getLogger(__name__)

MODEL_INPUTS = ("source_frames", "source_poses", "target_poses", "source_masks", "target_masks")


def as_size(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


# -- timing (the arithmetic lives in pipelines.media.timeline) ------------------------------------------------------

def driving_index_map(source_info: VideoInfo, driving_info: VideoInfo | PoseTrack,
                      policy: str = timeline.DEFAULT_LENGTH_POLICY, frames: int | None = None) -> tuple[int, list[int]]:
    """Output frames (the source's grid) → driving frames (the driving motion's grid, a video's or a pose track's):
    :func:`pipelines.media.timeline.driving_index_map` on the two inputs' frame counts and rates."""
    s_rate = source_info.rate if source_info.fps else 25
    if isinstance(driving_info, PoseTrack):
        nd, d_rate = len(driving_info), driving_info.fps or s_rate
    else:
        nd, d_rate = int(driving_info.frames), driving_info.rate if driving_info.fps else s_rate
    return timeline.driving_index_map(int(source_info.frames), s_rate, nd, d_rate, policy, frames)


# -- poses and masks -----------------------------------------------------------------------------------------------

def extract_poses(frames: np.ndarray, fps: float = 0.0, backend: str | PoseExtractor = DEFAULT_BACKEND,
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


def load_driving_track(driving) -> PoseTrack | None:
    if isinstance(driving, PoseTrack):
        return driving
    if isinstance(driving, str) and driving.lower().endswith(POSE_TRACK_SUFFIXES):
        return read_pose_track(driving)
    return None


def reference_alignment(source: str, driving, source_indices: Sequence[int] | None = None,
                        driving_indices: Sequence[int] | None = None, size=512, mode: str = DEFAULT_FIT_MODE,
                        ref_frames: int = 4, backend: str = DEFAULT_BACKEND, source_info: VideoInfo | None = None,
                        driving_info: VideoInfo | None = None) -> AlignTransform:
    """Compute the per-request :class:`~pipelines.conditioning.align.AlignTransform` from the first ``ref_frames``
    frames of each input.

    ``source_info`` / ``driving_info``: the inputs' :func:`~pipelines.media.video.probe_video` results when the
    caller has them (each input is probed once per request)."""
    size = as_size(size)
    si = list(source_indices[:ref_frames]) if source_indices is not None else list(range(ref_frames))
    s_info = source_info or probe_video(source)
    si = [i for i in si if i < s_info.frames] or [0]
    s_frames = read_fitted_frames(source, si, size, mode, info=s_info)
    s_track, s_masks = extract_poses(s_frames, s_info.fps, backend, with_masks=True)
    get_extractor(backend).reset()
    track = load_driving_track(driving)
    if track is not None:
        di = list(driving_indices[:ref_frames]) if driving_indices is not None else list(range(ref_frames))
        d_track = track.take([i for i in di if i < len(track)] or [0]).rescaled(size, mode)
        transform = compute_alignment(s_track, d_track, ref_frames)
    else:
        d_info = driving_info or probe_video(driving)
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
                   transform: AlignTransform | None, size=512, mode: str = DEFAULT_FIT_MODE,
                   backend: str = DEFAULT_BACKEND,
                   source_info: VideoInfo | None = None, driving_info: VideoInfo | None = None,
                   with_driving_frames: bool = False, keys: Sequence[str] | None = None) -> dict:
    """Everything the editing model needs for one window.

    ``driving`` is a video/frames URI or a :class:`PoseTrack` (or a pose-track file URI). Returns numpy arrays:
    ``source_frames`` (F,H,W,3) uint8, ``source_poses`` (F,H,W,3) uint8 renders, ``target_poses`` (aligned renders),
    ``source_masks`` and ``target_masks`` (F,H,W) uint8 {0,255}, ``source_keypoints`` (F,18,3),
    ``target_keypoints`` (aligned, F,18,3), ``source_hands``/``target_hands`` (F,2,21,3), ``source_flags`` and
    ``driving_flags`` (F,) int32 (bit 0 interpolated, bit 1 missing), and with ``with_driving_frames`` the fitted
    driving frames and raw driving poses/masks. ``keys`` limits the result to those arrays (e.g.
    :data:`MODEL_INPUTS`, what the editing model takes); the others are then not computed.
    """
    size = as_size(size)
    if len(source_indices) != len(driving_indices):
        raise ValueError("source_indices and driving_indices must have the same length")
    transform = transform or identity_alignment(size)
    ext = get_extractor(backend)
    s_frames = read_fitted_frames(source_uri, source_indices, size, mode, info=source_info)
    ext.reset()
    s_track, s_masks = extract_poses(s_frames, getattr(source_info, "fps", 0.0), ext, with_masks=True)
    track = load_driving_track(driving)
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
        if transform.mode in ("silhouette", "ground"):
            t_masks = aligned_masks(d_masks, d_track.body, transform, s_masks, source_body=s_track.body,
                                    target_body=aligned.body)
        else:
            t_masks = predicted_masks(d_masks, d_track.body, aligned.body, float(transform.width_ratio))
    else:
        aligned = apply_alignment(d_track, transform)
        # no driving pixels: carry the source silhouette from the source skeleton to the aligned target skeleton
        t_masks = np.stack([warp_mask(m, sb, ab) for m, sb, ab in zip(s_masks, s_track.body, aligned.body)])
    producers = {
        "source_frames": lambda: s_frames, "source_poses": lambda: render_poses(s_track, size),
        "target_poses": lambda: render_poses(aligned, size), "driving_poses": lambda: render_poses(d_track, size),
        "source_masks": lambda: s_masks, "target_masks": lambda: t_masks,
        "source_keypoints": lambda: s_track.body, "source_hands": lambda: s_track.hands,
        "target_keypoints": lambda: aligned.body, "target_hands": lambda: aligned.hands,
        "driving_keypoints": lambda: d_track.body, "driving_hands": lambda: d_track.hands,
        "source_flags": lambda: s_track.flags, "driving_flags": lambda: d_track.flags,
    }
    unknown = set(keys or ()) - set(producers)
    if unknown:
        raise ValueError(f"unknown window arrays: {sorted(unknown)}")
    out.update({k: producers[k]() for k in (keys or producers)})
    release_memory()
    return out
