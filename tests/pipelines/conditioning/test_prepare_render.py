"""Pose rendering matches the official sample pose images; pose-track files; alignment basics.

Regression: the body keypoints are decoded from an official pose PNG (joint discs found by colour), re-rendered, and
compared pixel by pixel away from the hands (hand key points are all drawn in one colour, so their identity cannot be
decoded). Tolerance: the decoded disc centres are integers while the official keypoints were sub-pixel floats, so
limb edges may move by one pixel; we require the non-black areas to overlap with IoU ≥ 0.83 and ≥ 98 % of the
overlapping pixels to have exactly the official colour (palette, R/B swap, 60 % limbs, disc size all checked).
"""
from __future__ import annotations

import numpy as np
import pytest

from pipelines import conditioning as P
from pipelines import media as M
from pipelines.conditioning.align import apply_alignment, compute_alignment
from pipelines.conditioning.render import decode_pose_image, official_joint_colors, render_pose


def _png(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _hand_zone(img: np.ndarray, ours: np.ndarray) -> np.ndarray:
    import cv2

    body_cols = {tuple(c) for c in np.unique(ours.reshape(-1, 3), axis=0)}
    full = (img.max(-1) == 255) & (img.min(-1) == 0)
    foreign = np.array([tuple(c) not in body_cols for c in img.reshape(-1, 3)]).reshape(img.shape[:2])
    zone = (full & foreign) | np.all(img == (255, 0, 0), -1)
    return cv2.dilate(zone.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0


@pytest.mark.parametrize("case", ["case-1", "case-6"])
def test_render_matches_official_pose_png(fixture_cases, case):
    img = _png(fixture_cases / case / "source_poses" / "frame_0.png")
    kp = decode_pose_image(img)
    assert (kp[:, 2] > 0).sum() >= 15
    ours = render_pose(kp, None, (512, 512))
    zone = _hand_zone(img, ours)
    a, b = img.any(-1) & ~zone, ours.any(-1) & ~zone
    iou = (a & b).sum() / (a | b).sum()
    same = np.all(img == ours, -1)[a & b].mean()
    assert iou >= 0.83, iou
    assert same >= 0.98, same


def test_render_style_details():
    body = np.zeros((18, 3), np.float32)
    body[1] = (100, 100, 1)
    body[2] = (60, 100, 1)
    hands = np.zeros((2, 21, 3), np.float32)
    hands[0, :, :2] = np.stack([np.linspace(150, 170, 21), np.linspace(150, 190, 21)], 1)
    hands[0, :, 2] = 1
    img = render_pose(body, hands, (256, 256))
    assert tuple(img[100, 100]) == tuple(official_joint_colors()[1]) == (0, 85, 255)  # neck disc, R/B swapped
    assert tuple(img[100, 80]) == (0, 0, 153)                                          # limb at 60 %
    assert np.all(img[100, 96:105] == img[100, 100]) and not np.all(img[100, 95] == img[100, 100])  # radius 4
    assert tuple(img[150, 150]) == (255, 0, 0)                                         # hand key points red
    assert img[:, :40].max() == 0                                                      # black background


def test_pose_track_json_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    t = P.PoseTrack(rng.random((5, 18, 3)) * 100, rng.random((5, 2, 21, 3)) * 100, [0, 1, 2, 0, 0], (90, 160), 12.5)
    P.write_pose_track(t, str(tmp_path / "m.json"))
    back = P.read_pose_track(str(tmp_path / "m.json"))
    np.testing.assert_allclose(back.body, t.body, atol=1e-3)
    assert back.size == (90, 160) and back.fps == 12.5 and list(back.flags) == [0, 1, 2, 0, 0]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(M.InputError, match="bad.json"):
        P.read_pose_track(str(tmp_path / "bad.json"))


def test_alignment_scales_to_source_and_is_json(fixture_cases):
    import json

    src = np.stack([decode_pose_image(_png(fixture_cases / "case-1" / "source_poses" / f"frame_{i}.png"))
                    for i in range(4)])
    drv = src.copy()
    drv[..., :2] = drv[..., :2] * 0.5 + 40  # the same person, half as big, elsewhere
    zeros = np.zeros((4, 2, 21, 3), np.float32)
    s_track = P.PoseTrack(src, zeros, np.zeros(4), (512, 512))
    d_track = P.PoseTrack(drv, zeros, np.zeros(4), (512, 512))
    tf = compute_alignment(s_track, d_track, keep_x=False, mode="bones")
    json.dumps(tf.to_dict())
    assert tf.global_scale == pytest.approx(2.0, rel=1e-3)
    out = apply_alignment(d_track, tf)
    vis = src[..., 2] > 0
    err = np.hypot(*(out.body[vis][:, :2] - src[vis][:, :2]).T)
    assert err.max() < 1.0


def test_ground_alignment_keeps_feet_and_scales_uniformly():
    body = np.zeros((1, 18, 3), np.float32)
    body[0, :, 2] = 1.0
    body[0, :, 0] = np.linspace(200, 300, 18)
    body[0, :, 1] = np.linspace(100, 400, 18)
    body[0, 1, 1], body[0, 10, 1], body[0, 13, 1] = 150, 400, 400  # neck, ankles on the floor at y=400
    d = P.PoseTrack(body, np.zeros((1, 2, 21, 3)), np.zeros(1), (512, 512))
    s_body = body.copy()
    s_body[0, 1, 1] = 400 - 1.5 * 250  # the source stands 1.5x taller (floor to neck)
    s = P.PoseTrack(s_body, np.zeros((1, 2, 21, 3)), np.zeros(1), (512, 512))
    tf = compute_alignment(s, d, ref_frames=1)
    assert tf.mode == "ground" and tf.global_scale == pytest.approx(1.5, rel=1e-3)
    out = apply_alignment(d, tf).body[0]
    fx = body[0, [8, 11], 0].mean()
    np.testing.assert_allclose(out[10, 1], 400, atol=1e-3)  # feet stay on the floor
    np.testing.assert_allclose(out[:, 0], fx + 1.5 * (body[0, :, 0] - fx), atol=1e-3)


def test_shrunk_mask_of_a_person_cut_by_the_top_edge_ends_below_it():
    from pipelines.conditioning.masks import similarity_mask

    mask = np.zeros((64, 64), np.uint8)
    mask[:, 24:40] = 255  # a person from the top edge to the bottom edge
    out = similarity_mask(mask, 0.5, 32.0, 63.0)
    rows = np.nonzero((out > 127).any(1))[0]
    assert rows[0] == pytest.approx(32, abs=1) and rows[-1] == 63  # shrunk about the bottom-centre, nothing above
    cols = np.nonzero((out > 127).any(0))[0]
    assert cols[0] == pytest.approx(28, abs=1) and cols[-1] == pytest.approx(35, abs=1)


def test_predicted_mask_takes_the_source_shape_near_its_outline_only():
    from pipelines.conditioning.masks import with_source_shape

    body = np.zeros((18, 3), np.float32)  # a standing skeleton in a 256² frame
    body[:, 2] = 1.0
    body[:, 0] = 128 + np.where(np.isin(np.arange(18), (2, 3, 4, 8, 9, 10, 14, 16)), -12, 12)
    body[[0, 1], 0] = 128
    body[:, 1] = np.linspace(40, 220, 18)
    body[[0, 14, 15, 16, 17], 1], body[1, 1] = 40, 60
    scaled = np.zeros((256, 256), np.uint8)
    scaled[40:230, 108:148] = 255                     # the driving outline, moved
    wider = np.zeros_like(scaled)
    wider[40:230, 100:156] = 255                      # the source person is broader by 8 px a side
    out = with_source_shape(scaled, wider, body, body)
    width = (out[130] > 127).sum()
    assert 40 < width < 56                            # pulled toward the source's outline, not onto it
    narrow = np.zeros_like(scaled)
    narrow[40:230, 116:140] = 255                     # ... and inward for a slimmer source
    assert 24 < (with_source_shape(scaled, narrow, body, body)[130] > 127).sum() < 40
    far = scaled.copy()
    far[40:230, 200:230] = 255                        # a source region far from the outline
    out = with_source_shape(scaled, far, body, body)
    assert not (out[:, 190:] > 127).any()
    assert (with_source_shape(scaled, np.zeros_like(scaled), body, body) == scaled).all()
