from __future__ import annotations

import numpy as np
import pytest

from mf_model.window import MAX_WINDOW_FRAMES
from pipelines.windows import ids
from pipelines.windows.planning import (
    Window,
    WindowPlanError,
    crossfade_weights,
    overlap_between,
    plan_windows,
    window_id,
)


def _check_plan(n: int, window: int, overlap: int) -> list[Window]:
    plan = plan_windows(n, window, overlap)
    assert plan[0].start == 0
    assert plan[-1].end == n  # last window end-aligned
    covered = np.zeros(n, dtype=bool)
    for i, w in enumerate(plan):
        assert w.index == i
        assert 0 <= w.start < w.end <= n  # never wraps
        assert w.length == min(window, n)
        assert w.length <= MAX_WINDOW_FRAMES
        covered[w.start:w.end] = True
        if i:
            prev = plan[i - 1]
            assert w.start > prev.start
            assert overlap_between(prev, w) >= min(overlap, n)
    assert covered.all()
    return plan


def test_default_plan_100_frames():
    plan = plan_windows(100)
    assert [(w.start, w.end) for w in plan] == [(0, 24), (16, 40), (32, 56), (48, 72), (64, 88), (76, 100)]


@pytest.mark.parametrize("n", [1, 5, 23, 24, 25, 40, 41, 56, 57, 100, 333, 1000])
@pytest.mark.parametrize("window,overlap", [(24, 8), (32, 8), (16, 0), (8, 7), (1, 0), (32, 31)])
def test_plan_properties(n, window, overlap):
    _check_plan(n, window, overlap)


def test_short_video_one_window():
    assert plan_windows(10) == [Window(0, 0, 10)]
    assert plan_windows(24) == [Window(0, 0, 24)]


def test_exact_grid_has_no_extra_window():
    # 24 + 16 * 2 = 56 frames fit the grid exactly
    assert [(w.start, w.end) for w in plan_windows(56)] == [(0, 24), (16, 40), (32, 56)]


@pytest.mark.parametrize(
    "args",
    [(10, 33, 8), (10, 24, 24), (10, 24, 30), (10, 0, 0), (10, 24, -1), (0, 24, 8), (-5, 24, 8), (10.5, 24, 8),
     (10, 24.0, 8), (True, 24, 8)],
)
def test_validation(args):
    with pytest.raises(WindowPlanError):
        plan_windows(*args)


def test_crossfade_weights():
    w = crossfade_weights(8)
    assert w.shape == (8,)
    assert np.all((w > 0) & (w < 1))
    assert np.all(np.diff(w) > 0)
    np.testing.assert_allclose(w + w[::-1], 1.0)  # symmetric ramp
    hard = crossfade_weights(8, crossfade=False)
    assert hard.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert crossfade_weights(0).shape == (0,)


def test_ids_deterministic_and_sensitive():
    p = {"steps": 50, "guidance_scale": 3.5, "seed": 42}
    a = window_id("r1", "s3://b/v.mp4", Window(0, 0, 24), p)
    assert a == window_id("r1", "s3://b/v.mp4", (0, 24), dict(reversed(list(p.items()))))
    assert a != window_id("r1", "s3://b/v.mp4", (16, 40), p)
    assert a != window_id("r1", "s3://b/w.mp4", (0, 24), p)
    assert a != window_id("r1", "s3://b/v.mp4", (0, 24), {**p, "seed": 43})
    assert a != window_id("r2", "s3://b/v.mp4", (0, 24), p)
    assert ids.params_hash({"x": 3.0}) == ids.params_hash({"x": 3})
    rid = ids.request_id("a.mp4", "b.mp4", p)
    assert rid == ids.request_id("a.mp4", "b.mp4", dict(p))
    assert rid != ids.request_id("a.mp4", "c.mp4", p)
