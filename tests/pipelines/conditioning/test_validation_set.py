"""The validation set's geometry: keypoints, masks and the mirror's left/right exchange transform consistently; the
partial-body part cuts at the named levels and its ground truth keeps the source's visible scale."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from benchmarks import prepare_validation as V  # noqa: E402
from benchmarks import validation_crops as C  # noqa: E402


def test_mirror_flips_x_and_exchanges_sides():
    g = V.Geo(V._affine(about=(255.5, 255.5), mirror=True), mirror=True)
    kp = np.zeros((18, 3), np.float32)
    kp[4] = (100, 200, 1)  # right wrist
    out = g.points(kp)
    assert out[4, 2] == 0 and out[7, 2] == 1
    np.testing.assert_allclose(out[7, :2], (511 - 100, 200), atol=1e-4)


def test_points_and_image_agree_and_window_hides():
    g = V.Geo(V._affine(0.5, (256, 256), (10, -20)), window=(0, 512, 0, 300))
    img = np.zeros((512, 512), np.uint8)
    img[300:304, 100:104] = 255
    kp = np.zeros((2, 3), np.float32)
    kp[0] = (101.5, 301.5, 1)
    kp[1] = (500, 300, 1)  # lands at x = 388 > window
    out = g.points(kp)
    warped = g.image(img, nearest=True)
    ys, xs = np.nonzero(warped)
    assert abs(xs.mean() - out[0, 0]) < 1.5 and abs(ys.mean() - out[0, 1]) < 1.5
    assert out[1, 2] == 0


def test_hand_f1():
    a = np.zeros((2, 64, 64), bool)
    b = a.copy()
    a[0, 10, 10:20] = True
    b[0, 12, 10:20] = True  # within tolerance
    assert V.hand_f1(a, b) == 1.0  # frame 2: neither has hands
    b[0] = False
    assert V.hand_f1(a, b) == 0.5


def test_half_frame_rate_keeps_every_other_frame_of_inputs_and_ground_truth():
    n, size = 6, V.SIZE
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 100:400, 200:300] = 255
    kp = np.zeros((n, 18, 3), np.float32)
    kp[:, :, 0] = np.arange(n)[:, None] * 10 + 50   # x = 50 + 10 t: each frame recognisable
    kp[:, :, 1], kp[:, :, 2] = 200, 1
    images = np.stack([np.full((size, size, 3), t, np.uint8) for t in range(n)])
    no_hands = np.zeros((n, size, size), bool)
    d = {"fps": 8.0, "source_images": images, "target_images": images, "source_poses_kp": kp,
         "target_aligned_poses_kp": kp, "source_masks": masks, "target_masks": masks, "predicted_masks": masks,
         "source_poses_hand": no_hands, "target_aligned_poses_hand": no_hands}
    name, gs, gd, extra = [v for v in V.variants(d) if v[0] == "half frame rate"][0]
    v = V.build_variant(d, gs, gd, extra)
    assert v["fps"] == 4.0
    assert len(v["src"]) == len(v["drv"]) == len(v["gt_src_kp"]) == len(v["gt_al_kp"]) == len(v["gt_pred"]) == 3
    np.testing.assert_array_equal(v["src"][:, 0, 0, 0], [0, 2, 4])
    np.testing.assert_allclose(v["gt_src_kp"][:, 0, 0], [50, 70, 90])
    np.testing.assert_allclose(v["gt_al_kp"][:, 0, 0], [50, 70, 90], atol=1e-3)   # identical masks: identity rule


def _standing_case(n=4):
    """A loaded-case dict of one synthetic standing person (source and driving alike), official-style keys."""
    size = V.SIZE
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 60:512, 200:300] = 255  # cut by the bottom edge at mid-shin, like the fixtures
    kp = np.zeros((n, 18, 3), np.float32)
    ys = {1: 110, 2: 110, 5: 110, 8: 280, 11: 280, 9: 420, 12: 420}
    for j, y in ys.items():
        kp[:, j] = (250, y, 1)
    images = np.zeros((n, size, size, 3), np.uint8)
    no_hands = np.zeros((n, size, size), bool)
    return {"fps": 8.0, "source_images": images, "target_images": images, "source_poses_kp": kp,
            "target_poses_kp": kp, "target_aligned_poses_kp": kp, "source_masks": masks, "target_masks": masks,
            "predicted_masks": masks, "source_poses_hand": no_hands, "target_aligned_poses_hand": no_hands}


def test_ground_truth_map_is_the_reframing_for_both_and_the_source_scale_for_one():
    m = np.zeros((512, 512), np.uint8)
    m[100:512, 200:300] = 255  # the official fixed point: bottom-centre (249.5, 511)
    zoom = V.Geo(V._affine(1.5, (250, 20)))
    both = V.ground_truth_map(m, m, zoom, zoom)
    np.testing.assert_allclose(both.m, zoom.m, atol=1e-9)
    src_only = V.ground_truth_map(m, m, zoom, V.Geo())
    p = src_only.points(np.array([[249.5, 100.0, 1.0]]))[0]
    assert p[0] == pytest.approx(249.5) and p[1] == pytest.approx(20 + 1.5 * 80)  # the source's scale and top
    shift = V.Geo(V._affine(shift=(40, 0)))
    drv_only = V.ground_truth_map(m, m, V.Geo(), shift)
    np.testing.assert_allclose(drv_only.m, shift.m, atol=1e-9)  # moves with the driving person only sideways
    mirror = V.Geo(V._affine(about=(255.5, 255.5), mirror=True), mirror=True)
    mm = V.ground_truth_map(m, m, mirror, mirror)
    np.testing.assert_allclose(mm.m, mirror.m, atol=1e-9)
    assert mm.mirror


def test_crop_variants_cut_at_the_named_levels_and_change_over_the_clip():
    d = _standing_case()
    vs = C.crop_variants(d)
    assert {v.cls for v in vs} == set(C.CLASSES)
    by = {v.name: v for v in vs}
    # the source cut at the hips: the hip line (y 280) lands on the bottom edge, the head kept
    g = by["src cut hips"].src[0]
    y = g.points(np.array([[250.0, 280.0, 1.0], [250.0, 60.0, 1.0]]))
    assert y[0, 1] == pytest.approx(511, abs=0.5) and 0 < y[1, 1] < 80  # zoomed about just above the head
    assert by["src cut hips"].drv is None and by["drv cut hips"].src is None
    zooms = [gg.m[0, 0] for gg in by["src push-in to hips"].src]
    assert zooms[0] == pytest.approx(1.0) and np.all(np.diff(zooms) > 0)
    shifts = [gg.m[0, 2] for gg in by["drv pan off the side"].drv]
    assert shifts[0] == pytest.approx(0.0) and abs(shifts[-1]) > 100
    v = C.build_crop_variant(d, by["src cut thighs"])
    assert v["src"].shape == (4, 512, 512, 3) and v["gt_al_kp"].shape == (4, 18, 3)
    # the aligned truth keeps the source's zoom: its hips land where the zoomed source's hips are
    np.testing.assert_allclose(v["gt_al_kp"][:, 8, 1], v["gt_src_kp"][:, 8, 1], atol=1e-3)
    assert (v["gt_al_kp"][:, 9, 2] == 0).all()  # the knees run past the edge: not scored
