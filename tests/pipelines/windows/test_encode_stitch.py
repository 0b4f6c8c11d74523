from __future__ import annotations

import subprocess
import uuid
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np
import pytest

from pipelines.media import storage
from pipelines.media.encode import EncodeError, VideoWriter, faststart, probe_output
from pipelines.media.timeline import to_fraction
from pipelines.windows.planning import crossfade_weights, plan_windows
from pipelines.windows.stitch import (
    SeamMeter,
    StitchError,
    iter_stitched,
    npz_window_reader,
    seam_score,
    side_by_side,
    stitch_to_writer,
)


def _lavfi_video(path: Path, rate: str, seconds: float, audio_seconds: float | None, size: str = "64x48") -> str:
    args = ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}:d={seconds}"]
    if audio_seconds is not None:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:d={audio_seconds}"]
    args += ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    if audio_seconds is not None:
        args += ["-c:a", "aac"]
    args.append(str(path))
    subprocess.run(args, check=True)
    return str(path)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return {
        "ntsc_audio": _lavfi_video(d / "ntsc_audio.mp4", "30000/1001", 2.0, 2.0),
        "pal_noaudio": _lavfi_video(d / "pal.mp4", "25", 1.0, None),
        "short_audio": _lavfi_video(d / "short_audio.mp4", "25", 1.0, 0.4),
    }


def _frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth moving gradient frames (compress well, survive yuv420p)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        out[t, ..., 0] = (x * 3 + t * 4 + seed) % 256
        out[t, ..., 1] = (y * 4 + t * 2) % 256
        out[t, ..., 2] = 128
    return out


def _smooth(n: int, h: int = 16, w: int = 16) -> np.ndarray:
    """Smoothly drifting sinusoids (no wrap-around): steady frame-to-frame change."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.arange(n, dtype=np.float32)[:, None, None]
    base = 128 + 90 * np.sin(x[None] / 3.0 + t / 6.0) * np.cos(y[None] / 4.0 - t / 9.0)
    return np.repeat(base[..., None], 3, axis=-1).round().astype(np.uint8)


def _decode(path: str, w: int, h: int) -> np.ndarray:
    raw, _ = ffmpeg.input(path).output("pipe:", format="rawvideo", pix_fmt="rgb24").global_args(
        "-loglevel", "error").run(capture_stdout=True)
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def test_to_fraction():
    assert str(to_fraction("30000/1001")) == "30000/1001"
    assert str(to_fraction(29.97002997002997)) == "30000/1001"
    assert str(to_fraction(25)) == "25"
    assert str(to_fraction((24000, 1001))) == "24000/1001"
    with pytest.raises(ValueError, match="positive"):
        to_fraction(0)


@pytest.mark.parametrize("fps", ["30000/1001", 25])
def test_writer_exact_frames_and_fps(tmp_path, fps):
    frames = _frames(37)
    out = str(tmp_path / "o" / "v.mp4")
    with VideoWriter(out, fps, preset="ultrafast") as w:
        for f in frames:
            w.write(f)
    assert w.result.frames == 37
    info = probe_output(out)
    assert info["frames"] == 37
    assert Fraction(info["fps"]) == to_fraction(fps)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert (info["width"], info["height"]) == (64, 48)
    assert not info["has_audio"]
    assert faststart(out)
    back = _decode(out, 64, 48)
    assert back.shape[0] == 37
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6.0


def test_writer_copies_audio_trimmed_to_video(tmp_path, media):
    src = media["ntsc_audio"]
    out = str(tmp_path / "a.mp4")
    with VideoWriter(out, probe_output(src)["fps"], audio_from=src, preset="ultrafast") as w:
        w.write_frames(_frames(30))
    res = w.result
    assert res.has_audio and res.audio_copied
    info = probe_output(out)
    assert info["frames"] == 30 and info["fps"] == "30000/1001"
    assert info["has_audio"] and info["audio_codec"] == "aac"
    video_seconds = 30 * 1001 / 30000
    assert info["audio_duration"] <= video_seconds + 0.05  # trimmed to the video, 2 s source audio
    assert info["audio_duration"] > video_seconds - 0.1
    assert faststart(out)


def test_short_audio_never_cuts_video(tmp_path, media):
    out = str(tmp_path / "s.mp4")
    with VideoWriter(out, 25, audio_from=media["short_audio"], preset="ultrafast") as w:
        w.write_frames(_frames(50))  # 2 s of video, 0.4 s of audio
    info = probe_output(out)
    assert info["frames"] == 50 and info["has_audio"]


def test_source_without_audio(tmp_path, media):
    out = str(tmp_path / "n.mp4")
    with VideoWriter(out, 25, audio_from=media["pal_noaudio"], preset="ultrafast") as w:
        w.write_frames(_frames(10))
    assert not w.result.has_audio
    assert probe_output(out)["frames"] == 10


def test_odd_size_padded_even(tmp_path):
    out = str(tmp_path / "odd.mp4")
    with VideoWriter(out, 25, preset="ultrafast") as w:
        w.write_frames(_frames(5, h=21, w=33))
    info = probe_output(out)
    assert (info["width"], info["height"]) == (34, 22) and info["frames"] == 5


def test_memory_target_and_audio_source(media):
    root = f"memory://mf-enc-{uuid.uuid4().hex[:8]}"
    src = storage.join(root, "src.mp4")
    storage.copy_file(media["ntsc_audio"], src)
    out = storage.join(root, "videos", "x.mp4")
    with VideoWriter(out, "30000/1001", audio_from=src, preset="ultrafast") as w:
        w.write_frames(_frames(12))
    info = probe_output(out)
    assert info["frames"] == 12 and info["has_audio"] and info["fps"] == "30000/1001"
    storage.remove(root)


def test_failure_leaves_no_output(tmp_path):
    out = str(tmp_path / "f.mp4")
    with pytest.raises(RuntimeError):
        with VideoWriter(out, 25, preset="ultrafast") as w:
            w.write_frames(_frames(3))
            raise RuntimeError("killed mid-encode")
    assert not Path(out).exists()
    assert list(tmp_path.iterdir()) == []
    w = VideoWriter(out, 25)
    w.write(_frames(1)[0])
    with pytest.raises(EncodeError):
        w.write(_frames(1, h=50)[0])  # size change
    w.abort()
    with pytest.raises(EncodeError):
        VideoWriter(out, 25).close()  # no frames
    assert not Path(out).exists()


# ---------------------------------------------------------------- stitching

def _slicer(video: np.ndarray, calls: list | None = None):
    def read(win):
        if calls is not None:
            calls.append((win.start, win.end))
        return video[win.start:win.end].copy()
    return read


@pytest.mark.parametrize("n", [10, 24, 41, 100])
@pytest.mark.parametrize("crossfade", [True, False])
def test_stitch_consistent_windows_is_identity(n, crossfade):
    video = _frames(n, 8, 8)
    wins = plan_windows(n, 24, 8)
    calls: list = []
    out = list(iter_stitched(wins, _slicer(video, calls), crossfade=crossfade))
    assert [g for g, _ in out] == list(range(n))
    np.testing.assert_array_equal(np.stack([f for _, f in out]), video)
    assert calls == [(w.start, w.end) for w in wins]  # each window read once, in order


def test_stitch_blends_overlap_with_ramp():
    wins = [(0, 24), (16, 40)]
    vals = {0: 0.0, 16: 200.0}

    def read(win):
        return np.full((win.length, 2, 2, 3), vals[win.start], np.uint8)

    out = np.stack([f for _, f in iter_stitched(wins, read)])[:, 0, 0, 0]
    assert (out[:16] == 0).all() and (out[24:] == 200).all()
    expect = np.rint(200 * crossfade_weights(8)).astype(np.uint8)
    np.testing.assert_array_equal(out[16:24], expect)
    hard = np.stack([f for _, f in iter_stitched(wins, read, crossfade=False)])[:, 0, 0, 0]
    assert (hard[:20] == 0).all() and (hard[20:] == 200).all()  # cut at the overlap midpoint


def test_stitch_triple_coverage_and_errors():
    video = _frames(41, 4, 4)
    wins = plan_windows(41)  # [0,24) [16,40) [17,41): frames 17..23 lie in three windows
    out = np.stack([f for _, f in iter_stitched(wins, _slicer(video))])
    np.testing.assert_array_equal(out, video)
    with pytest.raises(StitchError):
        list(iter_stitched([(0, 10), (12, 20)], _slicer(video)))  # gap
    with pytest.raises(StitchError):
        list(iter_stitched([(5, 10), (0, 8)], _slicer(video)))  # order
    with pytest.raises(StitchError):
        list(iter_stitched([(0, 10)], lambda w: video[:5]))  # wrong frame count


def test_seam_score_detects_inconsistent_windows():
    n = 100
    video = _smooth(n).astype(np.int16)
    wins = plan_windows(n)
    consistent = seam_score(video.astype(np.uint8), wins)
    assert 0.5 < consistent < 1.6

    def perturbed(win):
        return np.clip(video[win.start:win.end] + (25 if win.index % 2 else -25), 0, 255).astype(np.uint8)

    hard = np.stack([f for _, f in iter_stitched(wins, perturbed, crossfade=False)])
    soft = np.stack([f for _, f in iter_stitched(wins, perturbed, crossfade=True)])
    s_hard, s_soft = seam_score(hard, wins), seam_score(soft, wins)
    assert s_hard > 3 * s_soft
    assert s_soft < 3.0
    meter = SeamMeter([(0, 10)])
    for i in range(10):
        meter.update(i, video[i].astype(np.uint8))
    assert meter.score() is None  # one window: no seam


def test_stitch_npz_to_video_on_memory_fs():
    root = f"memory://mf-stitch-{uuid.uuid4().hex[:8]}"
    n = 45
    video = _smooth(n, 48, 64)
    wins = plan_windows(n, 16, 4)
    uris = []
    for w in wins:
        uri = storage.join(root, "windows", f"{w.index:05d}.npz")
        storage.write_npz(uri, frames=video[w.start:w.end])
        uris.append(uri)
    out = storage.join(root, "videos", "r.mp4")
    preview_frames = []
    with VideoWriter(out, 25, preset="ultrafast") as writer:
        stats = stitch_to_writer(wins, npz_window_reader(uris), writer,
                                 on_frame=lambda g, f: preview_frames.append(g))
    assert stats.frames == n and preview_frames == list(range(n))
    assert stats.seam_score is not None and stats.seam_score < 1.6
    assert probe_output(out)["frames"] == n
    storage.remove(root)


def test_side_by_side():
    a = np.zeros((48, 64, 3), np.uint8)
    b = np.full((96, 96, 3), 255, np.uint8)
    c = np.full((48, 32, 3), 7, np.uint8)
    s = side_by_side(a, b, c)
    assert s.shape == (48, 64 + 48 + 32, 3)
    assert (s[:, 64:112] == 255).all() and (s[:, 112:] == 7).all()
    assert side_by_side(a, c, height=24).shape == (24, 32 + 16, 3)
