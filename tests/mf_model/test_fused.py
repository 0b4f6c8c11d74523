"""Fused long-video mode (mf_model.fused): exactness against the plain mode, order independence, per-frame noise,
the fuse operation itself, groups and the memory formula. Tiny preset, 64 px, few steps."""
import itertools

import numpy as np
import pytest
import torch

from mf_model import EditOptions, EditWindow, FrameIndexedNoise, load_model
from mf_model.fused import LatentFuser
from mf_model.fused_memory import fused_memory, state_bytes, state_bytes_per_frame
from mf_model.fusion_plan import fusion_groups, num_windows, ramp_weights, window_spans
from tests.mf_model.helpers import box_window

torch.set_num_threads(1)
SPANS = [(0, 5), (3, 8), (4, 9)]  # frame 4 is in three windows, frames 0-2 in one
OPTS = EditOptions(steps=12, guidance_scale=3.5, camera=True, seed=5)  # guidance, SDE, replays and camera K/V


@pytest.fixture(scope="module")
def tiny():
    return load_model(preset_name="tiny", seed=3)


def _slice(video: EditWindow, start: int, end: int) -> EditWindow:
    return EditWindow(video.source_frames[start:end], video.source_poses[start:end], video.target_poses[start:end],
                      video.source_masks[start:end], video.target_masks[start:end],
                      frame_indices=list(range(start, end)), name=f"w{start}")


@pytest.fixture(scope="module")
def windows():
    video = box_window(frames=max(e for _, e in SPANS), seed=1)
    return [_slice(video, s, e) for s, e in SPANS]


@pytest.fixture(scope="module")
def fused_run(tiny, windows):
    return tiny.edit_fused(windows, OPTS, reconstruction=True)


def test_one_window_fused_equals_plain_bit_for_bit(tiny):
    win = box_window(frames=4, seed=2)
    win.frame_indices = list(range(10, 14))
    plain = tiny.edit(win, OPTS, reconstruction=True)
    (fused,) = tiny.edit_fused([win], OPTS, reconstruction=True)
    assert torch.equal(plain.info["latents"], fused.info["latents"])
    assert torch.equal(plain.info["reconstruction_latents"], fused.info["reconstruction_latents"])
    assert np.array_equal(plain.frames, fused.frames)
    assert np.array_equal(plain.reconstruction, fused.reconstruction)
    assert fused.info["fusion"]["mode"] == "fused" and fused.info["fusion"]["span"] == [10, 14]


def test_fused_result_does_not_depend_on_window_order(tiny, windows, fused_run):
    for perm in ([2, 0, 1], [1, 2, 0]):
        results = tiny.edit_fused([windows[k] for k in perm], OPTS, reconstruction=True)
        for k, res in zip(perm, results):
            assert torch.equal(res.info["latents"], fused_run[k].info["latents"])
            assert torch.equal(res.info["reconstruction_latents"], fused_run[k].info["reconstruction_latents"])
            assert np.array_equal(res.frames, fused_run[k].frames)


def test_shared_frames_agree_across_windows_and_fusion_changes_them(tiny, windows, fused_run):
    for key in ("latents", "reconstruction_latents"):
        for (a, ra), (b, rb) in itertools.combinations(zip(SPANS, fused_run), 2):
            lo, hi = max(a[0], b[0]), min(a[1], b[1])
            if lo < hi:
                xa = ra.info[key][:, :, lo - a[0]:hi - a[0]]
                xb = rb.info[key][:, :, lo - b[0]:hi - b[0]]
                assert torch.equal(xa, xb)
                assert np.array_equal(ra.frames[lo - a[0]:hi - a[0]], rb.frames[lo - b[0]:hi - b[0]])
    plain = tiny.edit(windows[0], OPTS)
    assert not torch.equal(plain.info["latents"], fused_run[0].info["latents"])  # the fuse did something


def test_initial_noise_is_a_function_of_seed_and_frame(tiny, windows):
    seen = []
    tiny.edit_fused(windows, EditOptions(steps=1, seed=9, decode=False),
                    tap=lambda name, i, v: seen.append(v.clone()) if name == "initial_noise" else None)
    whole = FrameIndexedNoise(9, range(0, 9)).initial((1, 4, 9, 8, 8), torch.float32, "cpu")
    assert len(seen) == len(SPANS)
    for (s, e), x in zip(SPANS, seen):
        assert torch.equal(x, whole[:, :, s:e])
        assert torch.equal(x, FrameIndexedNoise(9, range(s, e)).initial(x.shape, x.dtype, "cpu"))


def _latents(spans, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 4, e - s, 3, 2, generator=g) for s, e in spans]


def test_fuse_leaves_single_window_frames_and_takes_the_weighted_mean():
    spans = SPANS + [(20, 23)]  # a window that shares nothing
    lat = _latents(spans)
    fuser = LatentFuser(spans)
    out = fuser.fuse(lat)
    assert out[3] is lat[3]
    raw = ramp_weights(spans)
    for g in range(0, 9):
        cover = [k for k, (s, e) in enumerate(spans) if s <= g < e]
        vals = [out[k][:, :, g - spans[k][0]] for k in cover]
        if len(cover) == 1:
            assert torch.equal(vals[0], lat[cover[0]][:, :, g - spans[cover[0]][0]])
            continue
        w = np.array([raw[k][g - spans[k][0]] for k in cover])
        mean = sum(wk * lat[k][:, :, g - spans[k][0]].double() for wk, k in zip(w / w.sum(), cover))
        for v in vals:
            assert torch.allclose(v.double(), mean, atol=1e-6, rtol=0)
            assert torch.equal(v, vals[0])
    assert [torch.equal(a, b) for a, b in zip(lat, _latents(spans))] == [True] * 4  # inputs not modified


def test_fuse_is_independent_of_the_window_order():
    lat = _latents(SPANS, seed=1)
    ref = LatentFuser(SPANS).fuse(lat)
    for perm in itertools.permutations(range(3)):
        out = LatentFuser([SPANS[k] for k in perm]).fuse([lat[k] for k in perm])
        for k, y in zip(perm, out):
            assert torch.equal(y, ref[k])


def test_two_window_weights_are_the_crossfade():
    from pipelines.windows.planning import crossfade_weights, plan_windows
    wins = plan_windows(40, 24, 8)
    spans = [(w.start, w.end) for w in wins]
    fuser = LatentFuser(spans)
    later = fuser.normalised_weights(1)
    overlap = range(wins[1].start, wins[0].end)
    np.testing.assert_allclose([later[g] for g in overlap], crossfade_weights(len(overlap)), atol=1e-7)
    earlier = fuser.normalised_weights(0)
    np.testing.assert_allclose([earlier[g] + later[g] for g in overlap], 1.0, atol=1e-6)
    # the end-aligned last window of plan_windows(41) covers frames shared by three windows: weights still sum to 1
    spans = [(w.start, w.end) for w in plan_windows(41, 24, 8)]
    fuser = LatentFuser(spans)
    per = [fuser.normalised_weights(k) for k in range(len(spans))]
    for g in fuser.shared:
        assert abs(sum(p.get(g, 0.0) for p in per) - 1.0) < 1e-6
    assert min(w.min() for w in ramp_weights(spans)) > 0


def test_custom_weights_and_bad_inputs():
    lat = _latents([(0, 4), (2, 6)])
    out = LatentFuser([(0, 4), (2, 6)], weights=[[1, 1, 1, 1], [0, 0, 3, 3]]).fuse(lat)
    assert torch.equal(out[0][:, :, 2:], lat[0][:, :, 2:])  # all weight on window 0 at frames 2, 3
    with pytest.raises(ValueError, match="total fusion weight"):
        LatentFuser([(0, 4), (2, 6)], weights=[[1, 1, 0, 0], [0, 0, 1, 1]])
    with pytest.raises(ValueError, match="finite values"):
        LatentFuser([(0, 4), (2, 6)], weights=[[1, 1, 1], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="duplicate"):
        LatentFuser([(0, 4), (0, 4)])
    with pytest.raises(ValueError, match="fusion must be"):
        EditOptions(fusion="blend")
    w = box_window(frames=3)
    with pytest.raises(ValueError, match="need frame_indices"):
        window_spans([w, w])
    w2 = box_window(frames=3)
    w2.frame_indices = [0, 2, 3]
    with pytest.raises(ValueError, match="consecutive"):
        window_spans([w2])


def test_group_limit(tiny, windows):
    from mf_model.fused import edit_fused
    with pytest.raises(ValueError, match="at most 2"):
        edit_fused(tiny, windows, OPTS, max_windows=2)


def test_fusion_groups_are_balanced_and_consecutive():
    assert fusion_groups(1) == [range(0, 1)]
    assert fusion_groups(8, 8) == [range(0, 8)]
    assert fusion_groups(9, 8) == [range(0, 5), range(5, 9)]
    groups = fusion_groups(900, 8)
    assert len(groups) == 113 and max(map(len, groups)) - min(map(len, groups)) <= 1
    assert [k for g in groups for k in g] == list(range(900))
    from pipelines.windows.planning import plan_windows
    for frames in (5, 24, 25, 40, 41, 1000):
        assert num_windows(frames, 24, 8) == len(plan_windows(frames, 24, 8))


@pytest.mark.parametrize("size", [(64, 64), (64, 128)])
def test_memory_formula_counts_the_state_exactly(tiny, size):
    win = box_window(frames=3, h=size[0], w=size[1])
    sampler = tiny.sampler(EditOptions(steps=2))
    state = sampler.start(tiny.encode(win), FrameIndexedNoise(0, range(3)))
    sampler.step(state)  # the guidance's region counts are built at the first guidance step
    per_frame = state_bytes_per_frame(tiny.config, size, elsize=4)
    assert state_bytes(state) == 3 * per_frame["total"]
    mem = fused_memory(tiny.config, 1000, size, 24, 8, group_windows=8, elsize=4)
    assert (mem.windows, mem.groups, mem.group_windows) == (62, 8, 8)
    assert mem.device_extra == 7 * 24 * per_frame["total"]


def test_pixel_crossfade_of_a_fused_group_changes_no_frame(fused_run):
    """The pipeline stitches fused windows with its crossfade: within a group the shared frames are already equal,
    so every stitched frame is the windows' own."""
    from pipelines.windows.stitch import iter_stitched
    frames = {sp: r.frames for sp, r in zip(SPANS, fused_run)}
    for g, frame in iter_stitched(SPANS, lambda w: frames[(w.start, w.end)]):
        s, e = next(sp for sp in SPANS if sp[0] <= g < sp[1])
        assert np.array_equal(frame, frames[(s, e)][g - s])


def test_progress_counts_window_steps(tiny, windows):
    seen = []
    tiny.edit_fused(windows[:2], EditOptions(steps=2, decode=False), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
