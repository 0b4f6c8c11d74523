"""Every form of video in the corpus (tests/media_corpus.py, made by ffmpeg at test time) through the one
normalisation step: the right frame count on the constant-rate grid, upright, square pixels, the same stored frame
in each slot as ffmpeg's fps filter picks, 8-bit RGB; or a refusal that names the file and the problem."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipelines.media import InputError, probe_video, read_fitted_frames, read_frames
from tests.media_corpus import CASES, build, frame_code, markers, oracle_codes

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus")


def _refusal(path) -> InputError:
    with pytest.raises(InputError) as ei:
        info = probe_video(str(path))
        read_frames(str(path), range(info.frames), info=info)
    return ei.value


@pytest.mark.parametrize("name", CASES)
def test_corpus_case(corpus, name):
    c = build(name, corpus)
    if c.refused:
        err = _refusal(c.path)
        assert c.refused in err.reason.lower() and str(c.path) in str(err), str(err)
        return
    info = probe_video(str(c.path))
    assert (info.frames, info.width, info.height, info.rate) == (c.frames, c.width, c.height, c.fps), info
    assert info.duration == pytest.approx(c.duration)
    assert (info.rotation, info.media.orientation.hflip) == (c.rotation, c.hflip)
    assert c.vfr or not info.resampled  # constant rate: untouched (jitter that rounds onto the grid is too)
    assert (info.has_audio, info.rescaled) == (c.has_audio, c.sar != 1)
    frames = read_frames(str(c.path), range(info.frames), info=info)
    assert frames.shape == (c.frames, c.height, c.width, 3) and frames.dtype == np.uint8
    theirs = list(oracle_codes(c))
    if info.tone_mapped:  # PQ greys are other greys in SDR, brighter ones up to white: order and length kept
        centre = [int(f[c.height // 2, c.width // 2].mean()) for f in frames]
        assert centre == sorted(centre) and len(centre) == len(theirs) and centre[0] < 64 < 250 < centre[-1]
        frames = frames[np.array(centre) < 200]
    else:
        ours = [frame_code(f) for f in frames]
        assert ours[:len(theirs)] == theirs and len(ours) - len(theirs) in (0, 1), (ours, theirs)
    assert {markers(f) for f in frames} == {("top-left", "top-right")}  # upright, never mirrored


def test_windows_read_in_any_order_match_a_whole_read(corpus):
    c = build("hevc_bframes", corpus)
    info = probe_video(str(c.path))
    whole = read_frames(str(c.path), range(info.frames), info=info)
    for start in (info.frames - 5, 3, 0, 7):  # backwards, forwards, repeated: seeks and continued decoding
        part = read_frames(str(c.path), range(start, min(info.frames, start + 5)), info=info)
        np.testing.assert_array_equal(part, whole[start:start + 5])


def test_full_range_and_limited_range_give_the_same_picture(corpus):
    full, limited = build("yuvj_full_range_mp4", corpus), build("cfr_h264_mp4", corpus)
    a, b = (read_frames(str(c.path), [0]) for c in (full, limited))
    assert abs(int(a[0, 0, 0].mean()) - 255) <= 2 and abs(int(b[0, 0, 0].mean()) - 255) <= 2  # the white marker
    assert frame_code(a[0]) == frame_code(b[0]) == 0


def test_hdr_is_tone_mapped_with_a_warning(corpus, caplog):
    c = build("hdr10_hevc", corpus)
    from pipelines.media import video

    video._PROBES.items.clear()
    with caplog.at_level("WARNING"):
        info = probe_video(str(c.path))
    assert info.tone_mapped and "tone-mapped to SDR" in caplog.text
    frames = read_fitted_frames(str(c.path), range(info.frames), (64, 64), info=info)
    assert frames.dtype == np.uint8 and frames.shape == (c.frames, 64, 64, 3) and frames.max() > 200


def test_a_size_bound_refuses_before_decoding(corpus):
    c = build("cfr_h264_mp4", corpus)
    with pytest.raises(InputError, match="exceeds the 64 px limit"):
        probe_video(str(c.path), max_side=64)
    with pytest.raises(InputError, match="more than 10 frames"):
        probe_video(str(c.path), max_frames=10)
