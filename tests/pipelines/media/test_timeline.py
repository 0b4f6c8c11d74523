"""One place for time (pipelines.media.timeline): the constant-rate grid, ffmpeg's fps filter as the oracle for
which stored frame fills each slot, nominal rates, bounds, and the source↔driving map."""
from __future__ import annotations

import random
import subprocess
from fractions import Fraction

import numpy as np
import pytest

from pipelines.media import probe_video, read_frames
from pipelines.media.timeline import (
    RateError,
    driving_index_map,
    nominal_rate,
    slot_time,
    timeline_from_timestamps,
    to_fraction,
)

MS = Fraction(1, 1000)
STEP = 7  # luma step between frames of the coded clips


def _coded_clip(path, times_ms: list[int]) -> None:
    """A lossless clip whose k-th stored frame is flat grey STEP*k, presented at times_ms[k]."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=1000)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv444p"
        s.options = {"qp": "0"}
        s.codec_context.time_base = s.time_base = MS
        for k, t in enumerate(times_ms):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), STEP * k % 250, np.uint8), format="rgb24")
            f.pts, f.time_base = t, MS
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _codes(frames: np.ndarray) -> list[int]:
    return [int(round(v / STEP)) for v in frames[:, 32, 32, 0].astype(float)]


def _ffmpeg_fps(path, rate: int) -> list[int]:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"fps={rate}", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return _codes(np.frombuffer(raw, np.uint8).reshape(-1, 64, 64, 3))


def test_constant_rate_streams_are_never_resampled():
    for rate, tb in ((Fraction(30000, 1001), Fraction(1, 30000)), (Fraction(25), Fraction(1, 12800)),
                     (Fraction(30), MS), (Fraction(24000, 1001), MS), (Fraction(60), Fraction(1, 90000))):
        times = [round(k / rate / tb) for k in range(500)]  # rounded to the time base: 33/34 ms steps at 30 fps
        assert nominal_rate(times, tb) == rate
        tl = timeline_from_timestamps(times, tb, rate)
        assert (tl.frames, tl.resampled) == (500, False), (rate, tb)


def test_grid_slots_follow_ffmpegs_fps_filter(tmp_path):
    rng = random.Random(7)
    for trial in range(4):
        t, times = 0, []
        for _ in range(30):  # 30 fps with drops, bursts and jitter
            times.append(t)
            t += rng.choice([33, 33, 33, 17, 66, 40, 25])
        path = tmp_path / f"vfr{trial}.mp4"
        _coded_clip(path, times)
        info = probe_video(str(path), fps=30)
        ours = _codes(read_frames(str(path), range(info.frames), info=info))
        theirs = _ffmpeg_fps(path, 30)
        # ffmpeg 5.1 drops the last frame's own duration at the end; every slot it writes is ours
        assert ours[:len(theirs)] == theirs and len(ours) in (len(theirs), len(theirs) + 1), (ours, theirs)
        assert info.resampled and ours[-1] == 29


def test_a_constant_rate_clip_decodes_frame_for_frame(tmp_path):
    path = tmp_path / "cfr.mp4"
    _coded_clip(path, [round(k * 1000 / 30) for k in range(30)])
    info = probe_video(str(path))
    assert (info.fps, info.frames, info.resampled) == (30.0, 30, False)
    assert _codes(read_frames(str(path), range(30), info=info)) == list(range(30))
    assert _codes(read_frames(str(path), [29, 3, 3, 17], info=info)) == [29, 3, 3, 17]  # any order, repeats


def test_a_requested_rate_samples_by_time(tmp_path):
    path = tmp_path / "cfr60.mp4"
    _coded_clip(path, [round(k * 1000 / 60) for k in range(30)])
    info = probe_video(str(path), fps=30)
    assert (info.frames, info.fps, info.resampled) == (15, 30.0, True)
    ours = _codes(read_frames(str(path), range(15), info=info))
    assert ours == _ffmpeg_fps(path, 30)[:15] and ours[:2] == [0, 2]  # 17/33/50/67/83 ms: the later frame wins


def test_timestamps_start_at_zero_and_the_audio_offset_follows():
    tb = Fraction(1, 1000)
    tl = timeline_from_timestamps([10_000 + 40 * k for k in range(10)], tb, Fraction(25), origin=Fraction(10))
    assert tl.start == 0 and slot_time(tl, 5) == pytest.approx(0.2)
    late = timeline_from_timestamps([500 + 40 * k for k in range(10)], tb, Fraction(25))  # video starts 0.5 s in
    assert slot_time(late, 0) == pytest.approx(0.5) and slot_time(late, 25) == pytest.approx(1.5)


def test_the_grid_is_bounded_before_it_is_built():
    with pytest.raises(RateError, match="exceed the limit of 1000"):
        timeline_from_timestamps([0, 10 * 3600 * 1000], MS, Fraction(30), max_frames=1000)  # a 10-hour jump


def test_rates_and_the_driving_map():
    assert str(to_fraction(29.97002997002997)) == "30000/1001" and to_fraction("24000/1001") == Fraction(24000, 1001)
    for bad in (0, -1, "x", float("nan"), "1/0"):
        with pytest.raises(ValueError):
            to_fraction(bad)
    assert driving_index_map(10, 10, 10, 20, "trim") == (5, [0, 2, 4, 6, 8])
    assert driving_index_map(4, 30, 3, 15, "hold")[1] == [0, 1, 1, 2]
    assert driving_index_map(6, 25, 2, 25, "loop")[1] == [0, 1, 0, 1, 0, 1]
    assert driving_index_map(6, Fraction(30000, 1001), 6, Fraction(30000, 1001)) == (6, list(range(6)))
