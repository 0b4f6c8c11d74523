"""Temporal clean-up of a pose track: choose and follow one person, fill short gaps, smooth (One-Euro, both ways)."""
from __future__ import annotations

import math

import numpy as np

from pipelines.conditioning.poses.keypoints import FLAG_INTERPOLATED, FLAG_MISSING, PoseTrack


def person_box(body: np.ndarray, thr: float = 0.3):
    vis = body[:, 2] > thr
    if vis.sum() < 2:
        return None
    xs, ys = body[vis, 0], body[vis, 1]
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def choose_person(candidates: list[np.ndarray], previous: np.ndarray | None = None, thr: float = 0.3) -> int:
    """Index of the person to keep among (18, 3) candidates: nearest to ``previous`` if given, else the most
    prominent one (largest keypoint box weighted by mean score)."""
    if not candidates:
        return -1
    best, best_key = -1, None
    for i, c in enumerate(candidates):
        box = person_box(c, thr)
        if box is None:
            continue
        if previous is not None and person_box(previous, thr) is not None:
            both = (c[:, 2] > thr) & (previous[:, 2] > thr)
            if both.any():
                key = -float(np.mean(np.hypot(*(c[both, :2] - previous[both, :2]).T)))
            else:
                pb = person_box(previous, thr)
                key = -math.hypot((box[0] + box[2] - pb[0] - pb[2]) / 2, (box[1] + box[3] - pb[1] - pb[3]) / 2)
        else:
            area = (box[2] - box[0]) * (box[3] - box[1])
            key = area * float(c[c[:, 2] > thr, 2].mean())
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best


def _fill_series(vals: np.ndarray, ok: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate rows of ``vals`` (N, D) where ``ok`` is False, for interior gaps of ≤ ``max_gap``."""
    n = len(ok)
    filled = np.zeros(n, bool)
    idx = np.nonzero(ok)[0]
    if len(idx) < 2:
        return vals, filled
    for a, b in zip(idx[:-1], idx[1:]):
        gap = b - a - 1
        if 0 < gap <= max_gap:
            for t in range(a + 1, b):
                f = (t - a) / (b - a)
                vals[t] = vals[a] * (1 - f) + vals[b] * f
                filled[t] = True
    return vals, filled


def fill_gaps(track: PoseTrack, max_gap: int = 8, thr: float = 0.3) -> PoseTrack:
    """Fill frames where the person (or a joint) was lost for at most ``max_gap`` frames by linear interpolation.

    Frames with no person that are filled get ``FLAG_INTERPOLATED`` (and lose ``FLAG_MISSING``); longer gaps stay
    ``FLAG_MISSING`` with zero scores.
    """
    body, hands, flags = track.body.copy(), track.hands.copy(), track.flags.copy()
    present = (body[:, :, 2] > thr).sum(axis=1) >= 2
    flags = np.where(present, flags & ~FLAG_MISSING, flags | FLAG_MISSING).astype(np.int32)
    frame_filled = np.zeros(len(body), bool)
    for j in range(18):
        ok = body[:, j, 2] > thr
        vals, filled = _fill_series(body[:, j].copy(), ok, max_gap)
        # only fill joints of frames where the person was absent or the joint blinked out
        body[filled, j] = vals[filled]
        frame_filled |= filled & ~present
    for k in range(2):
        ok = hands[:, k, 0, 2] > thr
        flat = hands[:, k].reshape(len(hands), -1).copy()
        vals, filled = _fill_series(flat, ok, max_gap)
        hands[filled, k] = vals[filled].reshape(-1, 21, 3)
    flags[frame_filled] = (flags[frame_filled] | FLAG_INTERPOLATED) & ~FLAG_MISSING
    return PoseTrack(body, hands, flags, track.size, track.fps, dict(track.meta))


class OneEuro:
    """One-Euro low-pass filter over a sequence (Casiez et al. 2012), vectorised over the last axis."""

    def __init__(self, fps: float, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0):
        self.fps, self.min_cutoff, self.beta, self.d_cutoff = float(fps or 25.0), min_cutoff, beta, d_cutoff

    @staticmethod
    def _alpha(cutoff, rate):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * rate)

    def __call__(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = x.copy()
        prev = dprev = None
        for t in range(len(x)):
            if not valid[t]:
                prev = dprev = None
                continue
            if prev is None:
                prev, dprev = x[t].copy(), np.zeros_like(x[t])
                continue
            dx = (x[t] - prev) * self.fps
            ad = self._alpha(self.d_cutoff, self.fps)
            dprev = ad * dx + (1 - ad) * dprev
            cutoff = self.min_cutoff + self.beta * np.abs(dprev)
            a = self._alpha(cutoff, self.fps)
            prev = a * x[t] + (1 - a) * prev
            out[t] = prev
        return out

    def both_ways(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The mean of the filter run forward and backward in time: a clip is processed whole, so the smoothing
        need not lag (the forward pass trails a moving joint, the backward pass leads it by about as much)."""
        return (self(x, valid) + self(x[::-1], valid[::-1])[::-1]) / 2


# One-Euro defaults (cut-offs in Hz, so the smoothing adapts to the frame rate): light at the official 8 fps, where
# limbs move far between frames, stronger on 25-30 fps video jitter. Run both ways (OneEuro.both_ways), measured with
# benchmarks/prepare_validation.py at 24 frames, 8 fps (these defaults unchanged): source / aligned pose px 5.708 /
# 7.191 forward only -> 5.669 / 7.013 both ways on the validation set (5.815 / 6.849 -> 5.785 / 6.687 on the tuned-on
# fixtures); other cut-offs (1-1.5 Hz, beta 0.03-0.3) and a 3-frame median moved either figure by <= 0.05 px.
SMOOTH_MIN_CUTOFF = 3.0
SMOOTH_BETA = 0.1


def smooth(track: PoseTrack, min_cutoff: float = SMOOTH_MIN_CUTOFF, beta: float = SMOOTH_BETA,
           thr: float = 0.3) -> PoseTrack:
    """One-Euro smoothing, forward and backward (no lag), of every visible keypoint coordinate over time (invisible
    stretches reset the filter)."""
    if len(track) < 3:
        return track
    f = OneEuro(track.fps or 25.0, min_cutoff, beta)
    body, hands = track.body.copy(), track.hands.copy()
    for j in range(18):
        body[:, j, :2] = f.both_ways(body[:, j, :2], body[:, j, 2] > thr)
    for k in range(2):
        for p in range(21):
            hands[:, k, p, :2] = f.both_ways(hands[:, k, p, :2], hands[:, k, p, 2] > thr)
    return PoseTrack(body, hands, track.flags.copy(), track.size, track.fps, dict(track.meta))


def clean_track(track: PoseTrack, max_gap: int = 8, smoothing: bool = True, **kw) -> PoseTrack:
    track = fill_gaps(track, max_gap=max_gap)
    return smooth(track, **kw) if smoothing else track
