"""Media probing/decoding, bad inputs with clear errors, timing policies, and prepare end to end on real media."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipelines import conditioning as P
from pipelines import media as M
from pipelines.media.errors import InputError

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg binary not installed")


def _ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _encode(frames: np.ndarray, path: Path, fps: int = 8, extra=("-c:v", "libx264", "-pix_fmt", "yuv420p")) -> Path:
    h, w = frames.shape[1:3]
    proc = subprocess.Popen([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                             "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", *extra, str(path)], stdin=subprocess.PIPE)
    proc.communicate(frames.tobytes())
    assert proc.returncode == 0
    return path


def _case_frames(fixture_cases: Path, case: str, folder: str, n: int) -> np.ndarray:
    return M.read_frames(str(fixture_cases / case / folder), range(n))


@pytest.fixture(scope="module")
def person_video(tmp_path_factory, fixture_cases) -> Path:
    frames = _case_frames(fixture_cases, "case-1", "source_images", 12)
    return _encode(frames, tmp_path_factory.mktemp("media") / "person.mp4")


def test_probe_and_read_chunks(person_video):
    info = M.probe_video(str(person_video))
    assert (info.frames, info.width, info.height) == (12, 512, 512)
    assert info.fps == pytest.approx(8.0)
    assert info.has_audio is False
    a = M.read_frames(str(person_video), [0, 5, 11], chunk=2)
    assert a.shape == (3, 512, 512, 3) and a.dtype == np.uint8
    with pytest.raises(InputError, match="out of range"):
        M.read_frames(str(person_video), [12])


def test_frames_folder_is_a_video(fixture_cases):
    info = M.probe_video(str(fixture_cases / "case-6" / "source_images"), fps=10)
    assert info.kind == "folder" and info.frames == 24 and info.fps == 10
    assert M.read_frames(info.uri, [23, 0], info=info).shape == (2, 512, 512, 3)


def test_fit_frame_pad_and_crop():
    img = np.full((100, 200, 3), 200, np.uint8)
    pad = M.fit_frame(img, (64, 64), "pad")
    assert pad.shape == (64, 64, 3) and pad[0, 32].sum() == 0 and pad[32, 32].sum() > 0
    crop = M.fit_frame(img, (64, 64), "crop")
    assert crop.shape == (64, 64, 3) and crop.min() > 0


def test_driving_index_map_policies():
    src = M.VideoInfo("s", frames=10, fps=10.0, width=8, height=8)
    drv = M.VideoInfo("d", frames=10, fps=20.0, width=8, height=8)  # twice the rate: 5 output frames
    n, m = P.driving_index_map(src, drv, "trim")
    assert n == 5 and m == [0, 2, 4, 6, 8]
    n, m = P.driving_index_map(src, drv, "hold")
    assert n == 10 and m[5:] == [9] * 5
    n, m = P.driving_index_map(src, drv, "loop")
    assert n == 10 and m[5:] == [0, 2, 4, 6, 8]
    n, m = P.driving_index_map(src, M.VideoInfo("d", 30, 5.0, 8, 8), "trim", frames=4)
    assert n == 4 and m == [0, 1, 1, 2]


@needs_ffmpeg
def test_bad_inputs_each_get_one_clear_error(tmp_path, person_video):
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp_path / "nope.mp4", "not found")
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.mp4", "empty")
    (tmp_path / "notes.mp4").write_text("this is not a video\n")
    cases["text"] = (tmp_path / "notes.mp4", "text file")
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(tmp_path / "audio.m4a"))
    cases["audio"] = (tmp_path / "audio.m4a", "no video stream")
    # moov at the end (no faststart), then cut in half: the index is gone
    raw = person_video.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = (tmp_path / "cut.mp4", "not a readable video")
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "still.jpg")
    cases["still"] = (tmp_path / "still.jpg", "still image")
    _ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:d=1", "-frames:v", "1", str(tmp_path / "one.mp4"))
    cases["one-frame"] = (tmp_path / "one.mp4", "single frame")
    for name, (path, reason) in cases.items():
        with pytest.raises(InputError) as ei:
            M.probe_video(str(path))
        msg = str(ei.value)
        assert str(path) in msg and reason in msg, (name, msg)
        assert isinstance(ei.value, ValueError)


@needs_ffmpeg
def test_av1_is_decoded(tmp_path):
    enc = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    codec = next((c for c in ("libsvtav1", "libaom-av1", "librav1e") if c in enc), None)
    if codec is None:
        pytest.skip("the local ffmpeg has no AV1 encoder (libsvtav1/libaom-av1/librav1e)")
    path = tmp_path / "clip.mkv"
    extra = ["-c:v", codec] + (["-cpu-used", "8"] if codec == "libaom-av1" else [])
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=64x64:d=0.5:r=8", *extra, str(path))
    info = M.probe_video(str(path))
    assert (info.frames, info.width, info.height, info.media.codec) == (4, 64, 64, "av1")
    assert M.read_frames(str(path), range(4)).shape == (4, 64, 64, 3)


@needs_ffmpeg
def test_video_without_person_is_refused(tmp_path, person_video):
    rng = np.random.default_rng(0)
    frames = np.repeat(np.linspace(0, 255, 128, dtype=np.uint8)[None, None, :, None], 128, 1)
    frames = np.repeat(np.repeat(frames, 6, 0), 3, 3) + rng.integers(0, 8, (6, 128, 128, 3), dtype=np.uint8)
    empty = _encode(frames.astype(np.uint8), tmp_path / "empty_scene.mp4")
    with pytest.raises(InputError, match="no person") as ei:
        P.prepare(str(empty), str(person_video), str(tmp_path / "out"), size=128, frames=6)
    assert str(empty) in str(ei.value)


@needs_ffmpeg
def test_person_leaving_frame_still_prepares_with_flags(tmp_path, fixture_cases, person_video):
    frames = _case_frames(fixture_cases, "case-6", "source_images", 12).copy()
    frames[4:8] = 90  # the person is gone for four frames
    src = _encode(frames, tmp_path / "leaves.mp4")
    out = tmp_path / "out"
    summary = P.prepare(str(src), str(person_video), str(out), size=256, frames=12)
    assert summary["frames"] == 12
    import pyarrow.parquet as pq

    flags = pq.read_table(out / "keypoints.parquet", use_threads=False).column("source_flags").to_numpy()
    assert (flags[4:8] != 0).all() and (flags[:3] == 0).all()
    for d in P.LAYOUT:
        assert len(list((out / d).iterdir())) == 12, d
    from PIL import Image

    m = np.asarray(Image.open(out / "source_masks" / "frame_0.png"))
    assert m.ndim == 2 and set(np.unique(m)) <= {0, 255} and m.max() == 255
    assert np.asarray(Image.open(out / "target_aligned_poses" / "frame_0.png")).shape == (256, 256, 3)


def test_prepare_window_shapes_and_pose_track_driving(tmp_path, fixture_cases, person_video):
    src = str(fixture_cases / "case-1" / "source_images")
    s_info = M.probe_video(src)
    transform = P.reference_alignment(src, str(person_video), size=256)
    import json

    assert P.AlignTransform.from_dict(json.loads(json.dumps(transform.to_dict()))) == transform
    w = P.prepare_window(src, str(person_video), [0, 1, 2], [0, 1, 2], transform, size=256, source_info=s_info)
    assert w["source_frames"].shape == (3, 256, 256, 3)
    assert w["target_poses"].shape == (3, 256, 256, 3) and w["target_poses"].dtype == np.uint8
    assert w["source_masks"].shape == w["target_masks"].shape == (3, 256, 256)
    assert set(np.unique(w["target_masks"])) <= {0, 255} and w["target_masks"].max() == 255
    # a pose track as the driving motion (file round trip)
    track = P.PoseTrack(w["driving_keypoints"], w["driving_hands"], w["driving_flags"], (256, 256), 8.0)
    P.write_pose_track(track, str(tmp_path / "motion.parquet"))
    back = P.read_pose_track(str(tmp_path / "motion.parquet"))
    np.testing.assert_allclose(back.body, track.body)
    w2 = P.prepare_window(src, str(tmp_path / "motion.parquet"), [0, 1, 2], [0, 1, 2], transform, size=256)
    np.testing.assert_array_equal(w2["target_keypoints"][..., 2] > 0, w["target_keypoints"][..., 2] > 0)
    assert w2["target_masks"].max() == 255
