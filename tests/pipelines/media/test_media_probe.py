"""Media checked before anything is decoded beyond its first frame: a container allow-list and plain files only,
paths that can never read as options, packets counted rather than headers believed (pipelines.media.probe)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from pipelines.media import InputError, probe_media, probe_video

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", *args], check=True)


@pytest.fixture
def cfr(tmp_path):
    path = tmp_path / "cfr.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=2", "-f", "lavfi", "-i",
            "sine=duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path))
    return path


@needs_ffmpeg
def test_a_constant_rate_mp4_is_described_without_decoding(cfr):
    info = probe_media(str(cfr))
    assert (info.codec, info.width, info.height, info.fps, info.frames) == ("h264", 64, 48, 25.0, 50)
    assert info.has_audio and not info.variable_fps and "mp4" in info.format_name and info.stored_frames == 50
    assert abs(info.duration - 2.0) < 0.1


@needs_ffmpeg
@pytest.mark.parametrize("body", [b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/hostname\n\xff",
                                  b"ffconcat version 1.0\nfile '/etc/hostname'\n\xff"])
def test_playlists_and_concat_scripts_are_refused_without_following_them(tmp_path, body):
    path = tmp_path / "upload.mp4"
    path.write_bytes(body)
    for probe in (probe_media, probe_video):
        with pytest.raises(InputError) as ei:
            probe(str(path))
        assert "hostname" not in str(ei.value) and str(path) in str(ei.value)


@needs_ffmpeg
def test_an_mpeg_ts_container_is_not_accepted(tmp_path):
    path = tmp_path / "clip.ts"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=1", "-c:v", "libx264", str(path))
    with pytest.raises(InputError, match="not accepted"):
        probe_media(str(path))


@needs_ffmpeg
def test_a_path_starting_with_a_dash_is_a_file_not_an_option(cfr, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.rename(cfr, tmp_path / "-i.mp4")
    assert probe_media("-i.mp4").frames == 50
    assert probe_video("-i.mp4").frames == 50


@needs_ffmpeg
def test_a_variable_frame_rate_is_resampled_not_refused(tmp_path):
    path = tmp_path / "vfr.mp4"
    # 30 frames 1/30 s apart, then every third frame only: a phone-style rate change, timestamps kept
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=30:duration=4", "-vf", "select='lt(n,30)+not(mod(n,3))'",
            "-fps_mode", "passthrough", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    info = probe_video(str(path))
    assert info.resampled and info.fps == 30.0 and info.media.stored_frames == 60
    assert info.frames == 120 and abs(info.duration - 4.0) < 1e-9  # the whole clip on a 30 fps grid
    assert info.timeline.stored[28:34] == (28, 29, 30, 30, 30, 31)  # after frame 30 each stored frame is held


@pytest.mark.parametrize("ext", ["parquet", "json"])
def test_pose_track_header_reads_counts_without_rows_and_wants_a_positive_rate(tmp_path, ext):
    import numpy as np

    from pipelines.conditioning.poses.keypoints import PoseTrack, pose_track_header, write_pose_track

    n = 3000
    track = PoseTrack(np.zeros((n, 18, 3), np.float32), np.zeros((n, 2, 21, 3), np.float32), np.zeros(n, np.int32),
                      (64, 64), 0.0)
    write_pose_track(track, str(tmp_path / f"zero.{ext}"))
    with pytest.raises(InputError, match="fps must be positive"):
        pose_track_header(str(tmp_path / f"zero.{ext}"))
    track.fps = 24.0
    write_pose_track(track, str(tmp_path / f"ok.{ext}"))
    assert pose_track_header(str(tmp_path / f"ok.{ext}")) == (n, 24.0)
    (tmp_path / f"bad.{ext}").write_bytes(b"PAR1 not really" if ext == "parquet" else b"{}")
    with pytest.raises(InputError):
        pose_track_header(str(tmp_path / f"bad.{ext}"))
