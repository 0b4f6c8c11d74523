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
    DEFAULT_ALIGN_MODE,
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
from pipelines.conditioning.poses.subject import (
    MIN_PERSON_AREA,
    SubjectFilter,
    SubjectHint,
    SubjectNotFound,
    SubjectTrack,
    follow_subject,
    person_size_rule,
)
from pipelines.conditioning.poses.tracking import clean_track
from pipelines.conditioning.render import render_poses
from pipelines.media import timeline
from pipelines.media.errors import InputError
from pipelines.media.geometry import DEFAULT_FIT_MODE, fit_geometry
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

def person_detector(ext: PoseExtractor):
    """The backend's stateless one-person detector (``image -> (33, 4) landmarks | None``) that the subject search
    paints people out with, or None when the backend has none (DWPose)."""
    return getattr(ext, "detect_person", None) or getattr(ext, "_detect_one", None)


def with_subject_only(frames: np.ndarray, ext: PoseExtractor, subject: SubjectHint | None,
                      uri: str = "<frames>", strict: bool = True) -> np.ndarray:
    """``frames`` with everybody but the person ``subject`` picks on the first frame painted out (frame by frame,
    following them: :class:`~pipelines.conditioning.poses.subject.SubjectFilter`); ``subject`` is in the frames'
    pixels. Unchanged without a hint. :class:`InputError` when nobody is at the hint, or the backend cannot
    search."""
    if subject is None or not len(frames):
        return frames
    detect = person_detector(ext)
    if detect is None:
        raise InputError(uri, f"the {getattr(ext, 'name', 'pose')} backend cannot choose a subject by a point or a "
                              "box: use the mediapipe backend or leave the subject unset (the most prominent person)")
    flt = SubjectFilter(detect, hint=subject, strict=strict)
    flt.scan(frames)
    try:
        return np.stack([np.ascontiguousarray(flt(f)) for f in frames])
    except SubjectNotFound as exc:
        raise InputError(uri, str(exc)) from None


def extract_poses(frames: np.ndarray, fps: float = 0.0, backend: str | PoseExtractor = DEFAULT_BACKEND,
                  with_masks: bool = False, max_gap: int = 8, smoothing: bool = True, reset: bool = True,
                  subject: SubjectHint | None = None, uri: str = "<frames>", strict_subject: bool = True,
                  **backend_kwargs):
    """Poses of the most prominent person in fitted frames (N, H, W, 3) — or of the person ``subject`` picks on the
    first frame (a :class:`~pipelines.conditioning.poses.subject.SubjectHint` in the fitted frames' pixels; ``uri``
    names the input in its error): a cleaned :class:`PoseTrack` (short gaps interpolated and flagged, One-Euro
    temporal smoothing unless ``smoothing=False``), plus (N, H, W) uint8 masks if asked. MediaPipe's own landmark
    smoothing is off (it lags at low frame rates)."""
    ext = backend if isinstance(backend, PoseExtractor) else get_extractor(backend, **backend_kwargs)
    frames = with_subject_only(frames, ext, subject, uri, strict_subject)
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


def _fitted_hint(hint, info, size, mode: str, uri=None) -> SubjectHint | None:
    """A request's subject hint (video pixels; anything :meth:`SubjectHint.parse` takes) in the fitted frame."""
    try:
        hint = SubjectHint.parse(hint)
    except ValueError as exc:
        raise InputError(str(uri or "<subject>"), str(exc)) from None
    if hint is None:
        return None
    if info is None and isinstance(uri, str):
        info = probe_video(uri)
    h, w = int(getattr(info, "height", 0) or size[0]), int(getattr(info, "width", 0) or size[1])
    return hint.fitted(fit_geometry((h, w), size, mode))


def _window_hint(subject, first: int, info, size, mode: str, uri=None) -> tuple[SubjectHint | None, bool]:
    """The hint for a clip starting at frame ``first`` and whether it must be found there: a
    :class:`SubjectTrack`'s box there (fitted pixels; not strict: the subject may be out of view), or a plain hint
    (video pixels, on the clip's first frame) fitted (strict)."""
    if isinstance(subject, dict) and "frames" in subject:
        subject = SubjectTrack.from_dict(subject)
    if isinstance(subject, SubjectTrack):
        return subject.hint_at(first), False
    return _fitted_hint(subject, info, size, mode, uri), True


def check_person_size(track: PoseTrack, uri: str, what: str = "source") -> None:
    """:class:`InputError` when no frame of ``track`` holds a person large enough to follow (the rule in
    :func:`~pipelines.conditioning.poses.subject.person_size_rule`), saying how large the largest was."""
    from pipelines.conditioning.poses.tracking import person_box

    h, w = track.size
    areas = [0.0]
    for body in track.body:
        box = person_box(body)
        if box is not None and int((body[:, 2] > 0.3).sum()) >= 4:
            bw, bh = (box[2] - box[0]) * 1.2, (box[3] - box[1]) * 1.2  # the landmark box's margin, both sides
            areas.append(min(bw, w) * min(bh, h) / float(w * h))
    best = max(areas)
    if best <= 0:
        raise InputError(uri, f"no person found in the reference frames of the {what}: {person_size_rule(w, h)}")
    if best < MIN_PERSON_AREA:
        raise InputError(uri, f"no person large enough in the reference frames of the {what}: the largest found "
                              f"covers {best:.1%} of the frame; {person_size_rule(w, h)}")


def reference_alignment(source: str, driving, source_indices: Sequence[int] | None = None,
                        driving_indices: Sequence[int] | None = None, size=512, mode: str = DEFAULT_FIT_MODE,
                        ref_frames: int = 4, backend: str = DEFAULT_BACKEND, source_info: VideoInfo | None = None,
                        driving_info: VideoInfo | None = None, align_mode: str = DEFAULT_ALIGN_MODE,
                        source_subject=None, driving_subject=None) -> AlignTransform:
    """Compute the per-request :class:`~pipelines.conditioning.align.AlignTransform` from the first ``ref_frames``
    frames of each input.

    ``source_info`` / ``driving_info``: the inputs' :func:`~pipelines.media.video.probe_video` results when the
    caller has them (each input is probed once per request). ``align_mode``: one of
    :data:`~pipelines.conditioning.align.ALIGN_MODES` (the request's option). ``source_subject`` /
    ``driving_subject``: the person to follow where a video holds several (a
    :class:`~pipelines.conditioning.poses.subject.SubjectHint`, or its text/list/dict form, on the first frame
    used, in that video's pixels; a :class:`SubjectTrack` also does); None: the most prominent person. A source
    with no person large enough is an :class:`InputError` saying how large one must be."""
    size = as_size(size)
    si = list(source_indices[:ref_frames]) if source_indices is not None else list(range(ref_frames))
    s_info = source_info or probe_video(source)
    si = [i for i in si if i < s_info.frames] or [0]
    s_frames = read_fitted_frames(source, si, size, mode, info=s_info)
    hint, strict = _window_hint(source_subject, si[0], s_info, size, mode, source)
    s_track, s_masks = extract_poses(s_frames, s_info.fps, backend, with_masks=True, subject=hint, uri=source,
                                     strict_subject=strict)
    get_extractor(backend).reset()
    track = load_driving_track(driving)
    if track is not None:
        di = list(driving_indices[:ref_frames]) if driving_indices is not None else list(range(ref_frames))
        d_track = track.take([i for i in di if i < len(track)] or [0]).rescaled(size, mode)
        transform = compute_alignment(s_track, d_track, ref_frames, mode=align_mode)
    else:
        d_info = driving_info or probe_video(driving)
        di = list(driving_indices[:ref_frames]) if driving_indices is not None else list(range(ref_frames))
        di = [i for i in di if i < d_info.frames] or [0]
        d_frames = read_fitted_frames(driving, di, size, mode, info=d_info)
        hint, strict = _window_hint(driving_subject, di[0], d_info, size, mode, driving)
        d_track, d_masks = extract_poses(d_frames, d_info.fps, backend, with_masks=True, subject=hint,
                                         uri=str(driving), strict_subject=strict)
        get_extractor(backend).reset()
        transform = compute_alignment(s_track, d_track, ref_frames, s_masks, d_masks, mode=align_mode)
    del s_frames
    release_memory()
    if s_track.missing.all():
        raise InputError(source, f"no person found in the reference frames of the source: "
                                 f"{person_size_rule(size[1], size[0])}")
    check_person_size(s_track, source)
    return transform


def subject_track(uri: str, subject, indices: Sequence[int], size=512, mode: str = DEFAULT_FIT_MODE,
                  backend: str = DEFAULT_BACKEND, info: VideoInfo | None = None, stride: int = 4,
                  chunk: int = 64) -> SubjectTrack | None:
    """Follow the person ``subject`` picks on frame ``indices[0]`` (video pixels, as for
    :func:`reference_alignment`) through ``indices`` (every ``stride``-th of them, and the last), once per request:
    the :class:`SubjectTrack` each window's :func:`prepare_window` starts from. None without a hint."""
    size = as_size(size)
    info = info or probe_video(uri)
    hint = _fitted_hint(subject, info, size, mode)
    if hint is None:
        return None
    ext = get_extractor(backend)
    detect = person_detector(ext)
    if detect is None:
        raise InputError(uri, f"the {getattr(ext, 'name', 'pose')} backend cannot choose a subject by a point or a "
                              "box: use the mediapipe backend or leave the subject unset (the most prominent person)")
    picks = sorted(set(list(indices[::max(1, int(stride))]) + [indices[-1]])) if len(indices) else []
    picks = [i for i in picks if i < info.frames]
    frames_out, boxes = [], []
    last = None
    for k in range(0, len(picks), chunk):
        part = picks[k:k + chunk]
        frames = read_fitted_frames(uri, part, size, mode, info=info)
        try:
            got = follow_subject(detect, frames, hint if last is None else SubjectHint(box=last))
        except SubjectNotFound as exc:
            raise InputError(uri, str(exc)) from None
        for i, b in zip(part, got):
            frames_out.append(i)
            boxes.append(b)
            last = b or last
        del frames
        release_memory()
    return SubjectTrack(tuple(frames_out), tuple(boxes))


def prepare_window(source_uri: str, driving, source_indices: Sequence[int], driving_indices: Sequence[int],
                   transform: AlignTransform | None, size=512, mode: str = DEFAULT_FIT_MODE,
                   backend: str = DEFAULT_BACKEND,
                   source_info: VideoInfo | None = None, driving_info: VideoInfo | None = None,
                   with_driving_frames: bool = False, keys: Sequence[str] | None = None,
                   source_subject=None, driving_subject=None) -> dict:
    """Everything the editing model needs for one window.

    ``driving`` is a video/frames URI or a :class:`PoseTrack` (or a pose-track file URI). Returns numpy arrays:
    ``source_frames`` (F,H,W,3) uint8, ``source_poses`` (F,H,W,3) uint8 renders, ``target_poses`` (aligned renders),
    ``source_masks`` and ``target_masks`` (F,H,W) uint8 {0,255}, ``source_keypoints`` (F,18,3),
    ``target_keypoints`` (aligned, F,18,3), ``source_hands``/``target_hands`` (F,2,21,3), ``source_flags`` and
    ``driving_flags`` (F,) int32 (bit 0 interpolated, bit 1 missing), and with ``with_driving_frames`` the fitted
    driving frames and raw driving poses/masks. ``keys`` limits the result to those arrays (e.g.
    :data:`MODEL_INPUTS`, what the editing model takes); the others are then not computed. ``source_subject`` /
    ``driving_subject``: the chosen person, a :class:`SubjectTrack` (:func:`subject_track`, once per request: its
    box at the window's first frame) or a plain hint for a window that starts at the hint's frame (video pixels).
    """
    size = as_size(size)
    if len(source_indices) != len(driving_indices):
        raise ValueError("source_indices and driving_indices must have the same length")
    transform = transform or identity_alignment(size)
    ext = get_extractor(backend)
    s_frames = read_fitted_frames(source_uri, source_indices, size, mode, info=source_info)
    ext.reset()
    hint, strict = _window_hint(source_subject, source_indices[0] if len(source_indices) else 0, source_info, size,
                                mode, source_uri)
    s_track, s_masks = extract_poses(s_frames, getattr(source_info, "fps", 0.0), ext, with_masks=True, subject=hint,
                                     uri=str(source_uri), strict_subject=strict)
    track = load_driving_track(driving)
    out = {}
    if track is not None:
        d_track = track.take(driving_indices).rescaled(size, mode)
        d_track = clean_track(d_track, smoothing=False)
        d_masks = None
    else:
        d_frames = read_fitted_frames(driving, driving_indices, size, mode, info=driving_info)
        ext.reset()
        hint, strict = _window_hint(driving_subject, driving_indices[0] if len(driving_indices) else 0,
                                    driving_info, size, mode, driving)
        d_track, d_masks = extract_poses(d_frames, getattr(driving_info, "fps", 0.0), ext, with_masks=True,
                                         subject=hint, uri=str(driving), strict_subject=strict)
        if with_driving_frames:
            out["driving_frames"] = d_frames
            out["driving_masks"] = d_masks
    ext.reset()
    if d_masks is not None:
        aligned = apply_alignment(d_track, transform, s_masks, d_masks, source_body=s_track.body)
        if transform.mode != "bones":
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
