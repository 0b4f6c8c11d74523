"""Time, in one place: exact frame rates, presentation timestamps resampled to a constant rate, the source↔driving
frame map, and where in the source file (audio included) an output frame lies.

Every video is edited on a **constant-rate grid**: output frame ``k`` shows the input at ``t0 + k / rate``, where
``t0`` is the stream's first presentation timestamp (so timestamps start at zero) and ``rate`` is the stream's
nominal rate (or the rate a request names). Which stored frame fills slot ``k`` follows ffmpeg's ``fps`` filter
(``round=near``): each stored frame's presentation time is rounded to the nearest slot; a slot takes the last stored
frame rounded at or before it (a gap repeats the previous frame, frames that round onto one slot keep the last).
The grid ends where the last stored frame ends (its duration, else the typical interval), so a constant-rate stream
maps onto itself frame for frame and is never "resampled". Timestamps are handled as exact rationals.

Decode order never enters: timestamps are sorted into presentation order first (B-frames reorder packets).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Union

import numpy as np

FpsLike = Union[int, float, str, Fraction, tuple]
LENGTH_POLICIES = ("trim", "loop", "hold")
DEFAULT_LENGTH_POLICY = LENGTH_POLICIES[0]
# rates a camera, phone or editor writes; a measured rate within SNAP_TOLERANCE of one is taken as it
STANDARD_RATES = tuple(Fraction(r) for r in (
    "24000/1001", "24", "25", "30000/1001", "30", "48", "50", "60000/1001", "60", "90", "100", "120000/1001", "120",
    "5", "6", "8", "10", "12", "12.5", "15", "16", "20", "240"))
SNAP_TOLERANCE = 0.015  # relative (a millisecond time base writes 30 fps as 33 ms steps: 1 % off)
TYPICAL_SPREAD = 0.2  # intervals this far from the median still count as the nominal one (jitter)
MAX_LAST_FRAME_INTERVALS = 10  # a last frame's own duration counts up to this many typical intervals


class RateError(ValueError):
    """A frame rate that cannot be read, or is not positive."""


def to_fraction(fps: FpsLike) -> Fraction:
    """An exact frame rate: ``"30000/1001"``, ``(30000, 1001)``, ``Fraction``, ``25`` or a float such as 29.97.

    Floats are snapped to the nearest rational with a denominator up to 1001 when that is within 1e-6 (so
    ``29.97002997`` → ``30000/1001``), else up to 1,000,000.
    """
    try:
        if isinstance(fps, Fraction):
            out = fps
        elif isinstance(fps, tuple):
            out = Fraction(int(fps[0]), int(fps[1]))
        elif isinstance(fps, str):
            out = Fraction(fps.strip())
        elif isinstance(fps, (int, np.integer)) and not isinstance(fps, bool):
            out = Fraction(int(fps))
        elif isinstance(fps, (float, np.floating)) and math.isfinite(float(fps)):
            f = float(fps)
            out = Fraction(f).limit_denominator(1001)
            if abs(float(out) - f) > 1e-6:
                out = Fraction(f).limit_denominator(1_000_000)
        else:
            raise ValueError(fps)
    except (ValueError, ZeroDivisionError):
        raise RateError(f"cannot read a frame rate from {fps!r}") from None
    if out <= 0:
        raise RateError(f"frame rate must be positive, got {fps!r}")
    return out


def fraction_str(fps: Fraction) -> str:
    return f"{fps.numerator}/{fps.denominator}"


def snap_rate(rate: Fraction) -> Fraction:
    """``rate`` snapped to the nearest standard rate within :data:`SNAP_TOLERANCE`, else limited to a denominator
    of 1001."""
    std = min(STANDARD_RATES, key=lambda r: abs(rate - r))
    return std if abs(rate - std) <= SNAP_TOLERANCE * std else rate.limit_denominator(1001)


def _typical_interval(times: Sequence[int]) -> int:
    deltas = np.diff(np.asarray(times, dtype=np.int64))
    deltas = deltas[deltas > 0]
    return int(np.median(deltas)) if len(deltas) else 0


def nominal_rate(times: Sequence[int], time_base: Fraction, declared: Fraction | None = None) -> Fraction:
    """The rate a stream is meant to play at: the mean of its typical intervals (those within 20 % or one tick of
    the median interval of its sorted timestamps: a millisecond time base's 33/34 ms steps and a phone's 30/34/36 ms
    jitter are 30 fps; its drops to 15 fps and bursts to 60 fps are left out), snapped to a standard rate; the
    container's declared rate when timestamps cannot tell (fewer than two frames)."""
    deltas = np.diff(np.asarray(sorted(times), dtype=np.int64))
    deltas = deltas[deltas > 0]
    if not len(deltas):
        return snap_rate(declared) if declared and declared > 0 else Fraction(25)
    median = float(np.median(deltas))
    typical = deltas[np.abs(deltas - median) <= max(TYPICAL_SPREAD * median, 1.0)]
    mean = Fraction(int(typical.sum()), len(typical)) * time_base
    return snap_rate(1 / mean)


@dataclass(frozen=True)
class Timeline:
    """A stream's stored frames placed on a constant-rate grid (see the module docstring)."""

    rate: Fraction  # the grid's rate (frames per second)
    frames: int  # slots on the grid
    start: Fraction  # seconds: the first stored frame's presentation time (slot 0)
    stored: tuple[int, ...] | None  # slot -> stored frame (presentation order); None when the identity

    @property
    def resampled(self) -> bool:
        return self.stored is not None

    @property
    def duration(self) -> float:
        return float(self.frames / self.rate)

    @property
    def fps(self) -> float:
        return float(self.rate)

    def stored_index(self, k: int) -> int:
        return int(k) if self.stored is None else self.stored[int(k)]

    def stored_indices(self, slots: Sequence[int]) -> list[int]:
        return [self.stored_index(k) for k in slots]

    @classmethod
    def constant(cls, frames: int, rate: FpsLike) -> Timeline:
        """A grid of ``frames`` frames at ``rate`` that stores exactly those frames (a frame folder, a pose track)."""
        return cls(to_fraction(rate), int(frames), Fraction(0), None)


def timeline_from_timestamps(times: Sequence[int], time_base: Fraction, rate: Fraction,
                             last_duration: int = 0, max_frames: int | None = None,
                             origin: Fraction = Fraction(0)) -> Timeline:
    """Place stored frames with presentation timestamps ``times`` (ticks of ``time_base``, any order) on a grid at
    ``rate``. ``last_duration``: the last frame's own duration in ticks (0: unknown); ``origin``: the file's start
    in seconds (``start`` is measured from it). Raises :class:`RateError` when the grid would exceed ``max_frames``
    (checked before anything of that size is built)."""
    ts = sorted(int(t) for t in times)
    if not ts:
        return Timeline(rate, 0, Fraction(0), None)
    t0 = ts[0]
    num, den = time_base.numerator * rate.numerator, time_base.denominator * rate.denominator
    slots = [(2 * (t - t0) * num + den) // (2 * den) for t in ts]  # round half up (times are >= t0)
    interval = _typical_interval(ts)
    own = last_duration if 0 < last_duration <= MAX_LAST_FRAME_INTERVALS * max(interval, 1) else interval
    end = ts[-1] - t0 + (own if own > 0 else den // max(num, 1))
    frames = max(slots[-1] + 1, (2 * end * num + den) // (2 * den))
    if max_frames is not None and frames > max_frames:
        raise RateError(f"{frames} frames at {float(rate):.4g} fps exceed the limit of {max_frames}")
    start = Fraction(t0) * time_base - origin
    if slots == list(range(len(ts))) and frames == len(ts):
        return Timeline(rate, frames, start, None)
    stored, i = [], 0
    for k in range(frames):
        while i + 1 < len(slots) and slots[i + 1] <= k:
            i += 1
        stored.append(i)
    return Timeline(rate, frames, start, tuple(stored))




# -- source <-> driving ----------------------------------------------------------------------------------------------

def driving_index_map(source_frames: int, source_rate: FpsLike, driving_frames: int, driving_rate: FpsLike,
                      policy: str = DEFAULT_LENGTH_POLICY, frames: int | None = None) -> tuple[int, list[int]]:
    """Map output frames (the source's grid) to driving frames (the driving motion's own grid).

    Output frame ``k`` takes driving frame ``round(k * rate_d / rate_s)``. ``policy``: ``"trim"`` ends at the
    shorter of the two; ``"loop"`` runs the whole source, looping the driving motion; ``"hold"`` runs the whole
    source, holding the last driving frame. ``frames`` caps the output length. Returns ``(frames, mapping)``.
    """
    if policy not in LENGTH_POLICIES:
        raise ValueError(f"length policy must be one of {LENGTH_POLICIES}, not {policy!r}")
    ns, nd = int(source_frames), int(driving_frames)
    if nd <= 0 or ns <= 0:
        return 0, []
    ratio = to_fraction(driving_rate) / to_fraction(source_rate)
    covered = (nd - 1) * ratio.denominator // ratio.numerator + 1  # output frames the driving motion covers
    n = min(ns, covered) if policy == "trim" else ns
    if frames is not None:
        n = min(n, int(frames))
    mapping = []
    for k in range(n):
        j = (2 * k * ratio.numerator + ratio.denominator) // (2 * ratio.denominator)
        if j >= nd:
            j = j % nd if policy == "loop" else nd - 1
        mapping.append(int(j))
    return n, mapping


def slot_time(timeline: Timeline, k: int) -> float:
    """Seconds from the file's start to output frame ``k`` (where the source's audio for it lies)."""
    return float(timeline.start + Fraction(int(k)) / timeline.rate)
