"""Stitch a request's windows into one frame stream, in frame order, blending overlaps; the seam metric; previews.

Streaming: windows are read one at a time, in order. Frames before the next window's start are final and are yielded
at once; only the current window and the float tail that the next window overlaps are held, so memory is
O(window + overlap), never O(video). Overlaps are blended pairwise in order: the later window's weight is
:func:`~pipelines.windows.planning.crossfade_weights` over the
overlap ``[next.start, tail_end)`` (a ramp across the overlap
only), or a hard cut at the overlap's midpoint with ``crossfade=False``. Frames covered by one window pass through
bit-exactly.

Seam score (:class:`SeamMeter`, :func:`seam_score`)::

    d(k)        = mean |frame_k - frame_{k-1}|                 (over pixels and channels, 0..255 scale)
    zone(a, b)  = transitions k in [b.start, a.end]            (from the last frame before b until a's last frame:
                                                                everything where the output switches from a to b)
    seam(a, b)  = max_{k in zone(a, b)} d(k)
    inside      = mean of d(k) over transitions in no zone
    seam_score  = mean over boundaries of seam(a, b) / inside

A score of about 1 means the boundaries move no more than the content does inside windows: invisible seams. A hard
cut between inconsistent windows puts the whole jump on one transition (large score); a crossfade spreads it over
``L + 1`` transitions. The max makes a small upward bias (≈ the spread of d) on perfectly consistent content.
``None`` when there is no boundary (one window) or no transition inside windows.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from pipelines.media import storage
from pipelines.windows.planning import Window, crossfade_weights

ReadWindow = Callable[[Window], np.ndarray]
WindowLike = Union[Window, tuple]


class StitchError(ValueError):
    """Windows that cannot be stitched (gaps, order, frame counts or sizes)."""


def as_windows(windows: Sequence[WindowLike]) -> list[Window]:
    """Normalise ``(start, end)`` pairs or :class:`Window` objects into an ordered, checked window list."""
    out = []
    for i, w in enumerate(windows):
        if isinstance(w, Window):
            out.append(Window(i, w.start, w.end))
        else:
            start, end = w
            out.append(Window(i, int(start), int(end)))
    if not out:
        raise StitchError("no windows to stitch")
    for i, w in enumerate(out):
        if w.end <= w.start:
            raise StitchError(f"window {i} [{w.start}, {w.end}) is empty")
        if i:
            p = out[i - 1]
            if w.start <= p.start or w.end <= p.end:
                raise StitchError(f"windows must be in frame order: [{p.start}, {p.end}) then [{w.start}, {w.end})")
            if w.start > p.end:
                raise StitchError(f"gap between windows: [{p.start}, {p.end}) then [{w.start}, {w.end})")
    return out


def iter_stitched(
    windows: Sequence[WindowLike], read_window: ReadWindow, crossfade: bool = True
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(global_frame_index, frame)`` for every frame from the first window's start to the last one's end."""
    wins = as_windows(windows)
    tail: Optional[np.ndarray] = None  # float32 frames [tail_start, tail_end) not yet emitted
    tail_start = wins[0].start
    shape = None
    for k, win in enumerate(wins):
        frames = np.asarray(read_window(win))
        if frames.ndim != 4 or frames.shape[0] != win.length:
            raise StitchError(f"window {k} [{win.start}, {win.end}) returned shape {frames.shape}, "
                              f"expected {win.length} frames")
        if shape is None:
            shape = frames.shape[1:]
        elif frames.shape[1:] != shape:
            raise StitchError(f"window {k} has frame shape {frames.shape[1:]}, earlier windows {shape}")
        next_start = wins[k + 1].start if k + 1 < len(wins) else win.end
        n_overlap = 0
        if tail is not None:
            n_overlap = tail_start + tail.shape[0] - win.start
            if n_overlap < 0 or win.start != tail_start:
                raise StitchError(f"internal: tail [{tail_start}, +{tail.shape[0]}) vs window start {win.start}")
            weights = crossfade_weights(n_overlap, crossfade)
        new_tail = []
        for j in range(win.length):
            g = win.start + j
            if j < n_overlap:
                w = weights[j]
                blended = tail[j] * (1.0 - w) + frames[j].astype(np.float32) * w
                if g < next_start:
                    yield g, _to_uint8(blended)
                else:
                    new_tail.append(blended)
            elif g < next_start:
                yield g, frames[j]
            else:
                new_tail.append(frames[j].astype(np.float32))
        tail = np.stack(new_tail) if new_tail else None
        tail_start = next_start
        del frames
    if tail is not None:  # cannot happen with checked windows; keep the invariant explicit
        raise StitchError("internal: frames left after the last window")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def npz_window_reader(uris: Sequence[str], key: str = "frames") -> ReadWindow:
    """A ``read_window`` that loads window ``i`` from ``uris[i]`` (written by
    :func:`pipelines.media.storage.write_npz`)."""
    uris = list(uris)

    def read(win: Window) -> np.ndarray:
        return storage.read_npz(uris[win.index])[key]

    return read


class SeamMeter:
    """Streaming seam score of a stitched frame sequence (see the module docstring for the definition)."""

    def __init__(self, windows: Sequence[WindowLike]) -> None:
        wins = as_windows(windows)
        self.first = wins[0].start
        # zone of boundary b covers transitions k in [next.start, prev.end] (k = index of the later frame)
        self.zones = [(wins[i + 1].start, wins[i].end) for i in range(len(wins) - 1)]
        self._zone_max = [0.0] * len(self.zones)
        self._inside_sum = 0.0
        self._inside_n = 0
        self._prev: Optional[np.ndarray] = None
        self._prev_index: Optional[int] = None

    def update(self, index: int, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if self._prev is not None:
            if index != self._prev_index + 1:
                raise StitchError(f"SeamMeter got frame {index} after {self._prev_index}")
            d = float(np.mean(np.abs(frame.astype(np.int16) - self._prev.astype(np.int16))))
            in_zone = False
            for z, (lo, hi) in enumerate(self.zones):
                if lo <= index <= hi:
                    in_zone = True
                    self._zone_max[z] = max(self._zone_max[z], d)
            if not in_zone:
                self._inside_sum += d
                self._inside_n += 1
        self._prev = frame
        self._prev_index = index

    @property
    def boundary_diffs(self) -> list[float]:
        return list(self._zone_max)

    @property
    def inside_mean(self) -> Optional[float]:
        return self._inside_sum / self._inside_n if self._inside_n else None

    def score(self) -> Optional[float]:
        if not self.zones or not self._inside_n:
            return None
        inside = self.inside_mean
        seam = float(np.mean(self._zone_max))
        if inside == 0.0:
            return 1.0 if seam == 0.0 else math.inf
        return seam / inside


def seam_score(frames: Sequence[np.ndarray] | np.ndarray, windows: Sequence[WindowLike]) -> Optional[float]:
    """Seam score of frames ``windows[0].start ..`` given in order (a whole array; for tests and benchmarks)."""
    wins = as_windows(windows)
    meter = SeamMeter(wins)
    for i, f in enumerate(frames):
        meter.update(wins[0].start + i, f)
    return meter.score()


@dataclass
class StitchStats:
    frames: int
    seam_score: Optional[float]
    boundary_diffs: list[float]
    inside_mean: Optional[float]


def stitch_to_writer(
    windows: Sequence[WindowLike],
    read_window: ReadWindow,
    writer,
    *,
    crossfade: bool = True,
    on_frame: Optional[Callable[[int, np.ndarray], None]] = None,
    transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> StitchStats:
    """Stitch into ``writer`` (anything with ``write(frame)``, e.g. :class:`pipelines.media.encode.VideoWriter`).

    ``transform(frame)`` maps each stitched frame before it is written (e.g. letterbox removal and upscaling to the
    source resolution); the seam score is measured on the stitched frames before it. ``on_frame(index, frame)``
    sees every output frame (e.g. to feed a preview writer). The writer is not closed.
    """
    wins = as_windows(windows)
    meter = SeamMeter(wins)
    n = 0
    for g, frame in iter_stitched(wins, read_window, crossfade=crossfade):
        meter.update(g, frame)
        if transform is not None:
            frame = transform(frame)
        writer.write(frame)
        if on_frame is not None:
            on_frame(g, frame)
        n += 1
    return StitchStats(n, meter.score(), meter.boundary_diffs, meter.inside_mean)


def side_by_side(*frames: np.ndarray, height: Optional[int] = None) -> np.ndarray:
    """Concatenate RGB frames horizontally at one height (default: the first frame's), keeping aspect ratios.

    For previews: ``side_by_side(source, target_pose, edit)``.
    """
    if not frames:
        raise ValueError("side_by_side needs at least one frame")
    arrs = [np.asarray(f) for f in frames]
    for a in arrs:
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"side_by_side takes (H, W, 3) uint8 frames, got {a.shape} {a.dtype}")
    h = int(height or arrs[0].shape[0])
    out = []
    for a in arrs:
        if a.shape[0] != h:
            from PIL import Image

            w = max(1, int(round(a.shape[1] * h / a.shape[0])))
            a = np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))
        out.append(a)
    return np.concatenate(out, axis=1)
