"""Temporal windows of a video and their crossfade weights.

Planning rules:

- a window holds at most :data:`~mf_model.window.MAX_WINDOW_FRAMES` (32) frames — the motion modules'
  temporal position encoding;
- default 24 frames with an overlap of 8, i.e. a stride of 16;
- windows start at 0, 16, 32, ... and the **last window is end-aligned** to the last frame, so its overlap with the
  previous window can be larger than ``overlap`` (never smaller);
- windows never wrap around to the first frames;
- a video shorter than the window gives one window of the video's length.

Blending: inside an overlap ``[next.start, prev.end)`` of length ``L`` the later window's weight ramps
``(j + 1) / (L + 1)`` for ``j = 0 .. L-1`` (strictly between 0 and 1, only across the overlap); outside overlaps a
frame comes from its window alone. With ``crossfade=False`` the overlap is a hard cut at its midpoint: the first
``L // 2`` frames come from the earlier window, the rest from the later one.

Stitching blends windows pairwise in order (see :mod:`pipelines.windows.stitch`), so a frame covered by three windows (a
possible case for the end-aligned last window) is still well defined.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mf_model.window import MAX_WINDOW_FRAMES
from pipelines.windows import ids

DEFAULT_WINDOW = 24
DEFAULT_OVERLAP = 8


class WindowPlanError(ValueError):
    """Invalid window parameters or frame count."""


@dataclass(frozen=True)
class Window:
    """Frames ``[start, end)`` of a video; ``index`` is the window's position in the plan."""

    index: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def frame_indices(self) -> list[int]:
        return list(range(self.start, self.end))


def validate_window_params(window: int, overlap: int) -> None:
    """Raise :class:`WindowPlanError` unless ``1 <= window <= 32`` and ``0 <= overlap < window``."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise WindowPlanError(f"window must be an integer, got {window!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)):
        raise WindowPlanError(f"overlap must be an integer, got {overlap!r}")
    if window < 1:
        raise WindowPlanError(f"window must be at least 1 frame, got {window}")
    if window > MAX_WINDOW_FRAMES:
        raise WindowPlanError(f"window of {window} frames exceeds the maximum of {MAX_WINDOW_FRAMES}")
    if overlap < 0:
        raise WindowPlanError(f"overlap must be >= 0, got {overlap}")
    if overlap >= window:
        raise WindowPlanError(f"overlap ({overlap}) must be smaller than the window ({window})")


def plan_windows(num_frames: int, window: int = DEFAULT_WINDOW, overlap: int = DEFAULT_OVERLAP) -> list[Window]:
    """Split ``num_frames`` frames into overlapping windows (see the module docstring for the rules)."""
    validate_window_params(window, overlap)
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)):
        raise WindowPlanError(f"num_frames must be an integer, got {num_frames!r}")
    num_frames = int(num_frames)
    if num_frames < 1:
        raise WindowPlanError(f"cannot plan windows for {num_frames} frames")
    window, overlap = int(window), int(overlap)
    if num_frames <= window:
        return [Window(0, 0, num_frames)]
    stride = window - overlap
    starts = [0]
    while starts[-1] + window < num_frames:
        nxt = starts[-1] + stride
        if nxt + window >= num_frames:
            nxt = num_frames - window  # end-aligned last window
        starts.append(nxt)
    return [Window(i, s, s + window) for i, s in enumerate(starts)]


def overlap_between(prev: Window | tuple[int, int], nxt: Window | tuple[int, int]) -> int:
    """Number of frames shared by two consecutive windows (0 if they only touch)."""
    p_start, p_end = _span(prev)
    n_start, n_end = _span(nxt)
    return max(0, min(p_end, n_end) - max(p_start, n_start))


def crossfade_weights(length: int, crossfade: bool = True) -> np.ndarray:
    """Weights of the *later* window over an overlap of ``length`` frames (the earlier one gets ``1 - w``).

    Crossfade: ``(j + 1) / (length + 1)``; hard cut: 0 for the first ``length // 2`` frames, then 1.
    """
    if length < 0:
        raise WindowPlanError(f"overlap length must be >= 0, got {length}")
    j = np.arange(length, dtype=np.float32)
    if crossfade:
        return (j + 1.0) / float(length + 1)
    return (j >= length // 2).astype(np.float32)


def window_id(request_id: str, source: str, win: Window | tuple[int, int], params: Mapping[str, Any]) -> str:
    """Deterministic id of a window: uuid5 of the request, the source URI, the span and the parameter hash."""
    start, end = _span(win)
    return ids.window_id(request_id, source, start, end, params)


def _span(w: Window | tuple[int, int]) -> tuple[int, int]:
    if isinstance(w, Window):
        return w.start, w.end
    start, end = w
    return int(start), int(end)
