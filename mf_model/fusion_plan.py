"""The torch-free plan of the fused mode (:mod:`mf_model.fused`): window spans, fusion weights, groups.

The pipeline can import this without torch to plan a fused request: :func:`fusion_groups` says which consecutive
windows are fused together, :func:`ramp_weights` what weight each frame of a window gets at its shared frames.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mf_model.window import FUSED_GROUP_WINDOWS, EditWindow

Span = tuple[int, int]


def window_spans(windows: Sequence[EditWindow]) -> list[Span]:
    """``[start, end)`` of each window from its ``frame_indices`` (consecutive; ``None`` only for a lone window)."""
    spans = []
    for w in windows:
        idx = w.frame_indices
        if idx is None:
            if len(windows) > 1:
                raise ValueError(f"{w.name}: fused windows need frame_indices (their global frame span)")
            idx = range(w.num_frames)
        idx = [int(k) for k in idx]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise ValueError(f"{w.name}: fused windows need consecutive frame_indices, got {idx}")
        spans.append((idx[0], idx[0] + len(idx)))
    return check_spans(spans)


def check_spans(spans: Sequence[Span]) -> list[Span]:
    out = [(int(s), int(e)) for s, e in spans]
    if not out:
        raise ValueError("no windows to fuse")
    for s, e in out:
        if e <= s:
            raise ValueError(f"empty span [{s}, {e})")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate spans in {out}")
    return out


def ramp_weights(spans: Sequence[Span]) -> list[np.ndarray]:
    """The default fusion weights (float64, one per frame of each window; see the module docstring)."""
    spans = check_spans(spans)
    out = []
    for s, e in spans:
        n = e - s
        l_in = min(n, max([e2 - s for s2, e2 in spans if s2 < s] + [0]))
        l_out = min(n, max([e - s2 for s2, e2 in spans if e2 > e] + [0]))
        j = np.arange(n, dtype=np.float64)
        ramp_in = np.where(j < l_in, (j + 1) / (l_in + 1), 1.0)
        ramp_out = np.where(j >= n - l_out, (n - j) / (l_out + 1), 1.0)
        out.append(np.minimum(ramp_in, ramp_out))
    return out


def fusion_groups(num_windows: int, group_windows: int = FUSED_GROUP_WINDOWS) -> list[range]:
    """Consecutive windows fused together: ``ceil(n / group)`` groups of sizes differing by at most one."""
    if num_windows < 1 or group_windows < 1:
        raise ValueError(f"need num_windows >= 1 and group_windows >= 1, got {num_windows}, {group_windows}")
    groups = math.ceil(num_windows / group_windows)
    base, extra = divmod(num_windows, groups)
    out, start = [], 0
    for g in range(groups):
        size = base + (1 if g < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def num_windows(frames: int, window: int, overlap: int) -> int:
    """Windows of the pipeline's plan (``plan_windows``: stride ``window - overlap``, last window end-aligned)."""
    if frames <= window:
        return 1
    return 1 + math.ceil((frames - window) / (window - overlap))
