"""Limits and checks shared by both pose-track formats (:mod:`~pipelines.conditioning.poses.track_parquet`,
:mod:`~pipelines.conditioning.poses.track_json`).

The limits and what going over each does are the contract in the module docstring of
:mod:`pipelines.conditioning.poses.keypoints` ("Reading untrusted tracks"); here are their values, the accepted list
shapes of a row (:data:`SHAPES`, values a frame in :data:`PER_ROW`), :func:`cut` (how a file's value is quoted in an
error) and :func:`checked` (the file-level checks every parsed track passes: frames contiguous, ``fps``,
``width``/``height``). Every refusal is an :class:`~pipelines.media.errors.InputError` naming the file.
"""
from __future__ import annotations

import math

import numpy as np

from pipelines.media.errors import InputError

MAX_FRAMES = 1_000_000
MAX_FILE_BYTES = 512 << 20
JSON_FRAME_BYTES = 8 << 10     # JSON allowance a frame: the size cap is max_frames times this (and max_bytes)
JSON_VALUE_CHARS = 64 << 10    # one JSON frame or top-level value, at most
JSON_CHUNK = 1 << 20
MAX_FOOTER_BYTES = 16 << 20
MAX_PAGES = 100_000            # page headers walked a file, at most
BYTES_PER_VALUE = 24           # decompressed bytes a value may take in a column chunk (PLAIN + dictionary + levels)
MAX_FPS = 1000.0
MAX_SIDE = 1 << 16
PER_ROW = {"frame": 1, "flags": 1, "body": 54, "hands": 126}
SHAPES = {"body": {1: (54,), 2: (18, 3)}, "hands": {1: (126,), 2: (42, 3), 3: (2, 21, 3)}}  # by list depth


def cut(value, n: int = 80) -> str:
    """``repr(value)`` cut to ``n`` characters: error messages never echo a huge value."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return "<a huge number>"
    return text if len(text) <= n else text[:n - 3] + "..."


def shape_text(shape) -> str:
    """A shape written as list dimensions: ``(18, 3)`` is ``[18][3]``."""
    return "".join(f"[{d}]" for d in shape)


def _fps(uri: str, value, required: bool) -> float:
    """The rate: a finite number in (0, MAX_FPS]; a missing or zero rate is 0.0 ("unknown") unless ``required``."""
    try:
        fps = math.nan if isinstance(value, bool) else 0.0 if value is None else float(value)
    except (TypeError, ValueError):
        fps = math.nan
    if fps == 0 and not required:
        return 0.0
    if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise InputError(uri, f"pose track fps must be positive and at most {MAX_FPS:g}, got {cut(value)}")
    return fps


def _side(uri: str, meta: dict, key: str) -> int:
    """``meta[key]`` (``width``/``height``) as an integer in [1, MAX_SIDE]."""
    value = meta.get(key)
    if value is None:
        raise InputError(uri, f"pose track lacks {key} metadata")
    integral = isinstance(value, float) and value.is_integer()
    try:
        side = int(value) if integral or isinstance(value, int | str) and not isinstance(value, bool) else 0
    except ValueError:
        side = 0
    if not 1 <= side <= MAX_SIDE:
        raise InputError(uri, f"pose track {key} must be an integer in [1, {MAX_SIDE}], got {cut(value)}")
    return side


def checked(uri: str, cols: dict, meta: dict, fps_required: bool):
    """``(order, fps, (H, W))`` of parsed rows: frames contiguous once sorted (``order`` sorts them)."""
    frames = cols["frame"]
    if not len(frames):
        raise InputError(uri, "pose track holds no frames")
    order = slice(None) if bool(np.all(frames[1:] > frames[:-1])) else np.argsort(frames, kind="stable")
    frames = frames[order]
    if not np.array_equal(frames, np.arange(frames[0], frames[0] + len(frames))):
        raise InputError(uri, "pose track frames are not contiguous")
    return order, _fps(uri, meta.get("fps"), fps_required), (_side(uri, meta, "height"), _side(uri, meta, "width"))


