"""Shared by the fused-mode benchmarks: a synthetic long video built frame by frame (never whole), its windows, and
both ways of editing a request (crossfade: windows one by one; fused: groups of windows in lockstep)."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mf_model import EditOptions, EditResult, EditWindow  # noqa: E402
from mf_model.fusion_plan import fusion_groups  # noqa: E402
from pipelines.windows.planning import plan_windows  # noqa: E402


def _frame(g: int, size: int):
    """Global frame g: a gradient background, a box 'person' walking right and back; the target one 1/8 ahead."""
    yy, xx = np.mgrid[0:size, 0:size]
    bg = np.stack([xx * 255 // (size - 1), yy * 255 // (size - 1), np.full_like(xx, 90)], -1).astype(np.uint8)
    period = 2 * (size // 2)
    pos = g % period
    x0 = size // 8 + (pos if pos < size // 2 else period - pos) // 2
    bw, y0, y1 = size // 4, size // 4, 3 * size // 4
    shift = size // 8
    src, ps, pt = bg.copy(), np.zeros_like(bg), np.zeros_like(bg)
    ms, mt = np.zeros((size, size), np.uint8), np.zeros((size, size), np.uint8)
    src[y0:y1, x0:x0 + bw] = (200, 60 + g % 40, 40)
    ms[y0:y1, x0:x0 + bw] = 255
    mt[y0:y1, x0 + shift:x0 + shift + bw] = 255
    ps[y0:y1, x0 + bw // 2] = (255, 0, 0)
    pt[y0:y1, x0 + shift + bw // 2] = (255, 0, 0)
    return src, ps, pt, ms, mt


def window(start: int, end: int, size: int) -> EditWindow:
    parts = [_frame(g, size) for g in range(start, end)]
    arrays = [np.stack([p[k] for p in parts]) for k in range(5)]
    return EditWindow(*arrays, frame_indices=list(range(start, end)), name=f"w{start}-{end}")


def spans(frames: int, win: int, overlap: int) -> list[tuple[int, int]]:
    return [(w.start, w.end) for w in plan_windows(frames, win, overlap)]


def edit_request(model, mode: str, frames: int, size: int, win: int, overlap: int, options: EditOptions,
                 group: int, on_group: Callable[[list[EditResult]], None] = lambda r: None
                 ) -> Iterator[tuple[tuple[int, int], EditResult]]:
    """Edit a request window by window (``crossfade``) or group by group (``fused``); yields (span, result) in
    frame order, holding one window's (one group's) inputs and results at a time."""
    sp = spans(frames, win, overlap)
    groups = [range(k, k + 1) for k in range(len(sp))] if mode == "crossfade" else fusion_groups(len(sp), group)
    for g in groups:
        wins = [window(*sp[k], size) for k in g]
        results = [model.edit(wins[0], options)] if mode == "crossfade" else model.edit_fused(wins, options)
        on_group(results)
        del wins
        yield from zip((sp[k] for k in g), results)
        del results  # before the next group is edited
