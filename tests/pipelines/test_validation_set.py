"""The validation set's geometry: keypoints, masks and the mirror's left/right exchange transform consistently."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import prepare_validation as V  # noqa: E402


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
