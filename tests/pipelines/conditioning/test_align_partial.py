"""Alignment where the frame cuts a person: scale and placement from what both people show, joints past the frame
edge kept, the per-limb mode, drivings without pixels; on synthetic standing people whose truth is known."""
import numpy as np
import pytest

from pipelines.conditioning import align as A
from pipelines.conditioning.poses.keypoints import LIMB_SEQ, PoseTrack

SIZE = 512
# a standing person, OpenPose-18, feet at y = 0 and 400 px tall (neck at -330): x, y relative to the feet's centre
STAND = np.array([
    (0, -365), (0, -330), (-45, -330), (-55, -240), (-60, -160), (45, -330), (55, -240), (60, -160), (-25, -190),
    (-28, -100), (-30, -10), (25, -190), (28, -100), (30, -10), (-10, -375), (10, -375), (-20, -368), (20, -368),
], np.float32)
TOP = -400  # the silhouette top (hair) relative to the feet


def person(scale: float, feet=(256.0, 490.0), arms: float = 1.0) -> np.ndarray:
    """(18, 3) keypoints of STAND scaled by ``scale`` with the feet at ``feet`` (joints outside the frame are not
    seen, as a pose model gives them); ``arms`` lengthens the arms about the shoulders."""
    pts = STAND.copy()
    for sh, el, wr in ((2, 3, 4), (5, 6, 7)):
        pts[el] = pts[sh] + arms * (STAND[el] - STAND[sh])
        pts[wr] = pts[el] + arms * (STAND[wr] - STAND[el])
    body = np.zeros((18, 3), np.float32)
    body[:, :2] = np.asarray(feet, np.float32) + scale * pts
    inside = (body[:, 0] >= 0) & (body[:, 0] < SIZE) & (body[:, 1] >= 0) & (body[:, 1] < SIZE)
    body[:, 2] = inside.astype(np.float32)
    return body


def mask_of(scale: float, feet=(256.0, 490.0)) -> np.ndarray:
    """The person's silhouette (thick limbs, head up to the hair line), clipped by the frame."""
    import cv2

    body = person(scale, feet)
    body[:, 2] = 1.0
    m = np.zeros((SIZE, SIZE), np.uint8)
    t = max(2, int(30 * scale))
    for a, b in LIMB_SEQ[:13]:
        cv2.line(m, tuple(int(v) for v in body[a, :2]), tuple(int(v) for v in body[b, :2]), 255, t)
    head = (int(feet[0]), int(feet[1] + scale * (TOP + 30)))
    cv2.circle(m, head, int(30 * scale), 255, -1)
    cv2.line(m, tuple(int(v) for v in body[10, :2]), (int(body[10, 0]), int(feet[1])), 255, t)
    cv2.line(m, tuple(int(v) for v in body[13, :2]), (int(body[13, 0]), int(feet[1])), 255, t)
    return m


def _track(bodies) -> PoseTrack:
    bodies = np.stack(bodies).astype(np.float32)
    return PoseTrack(bodies, np.zeros((len(bodies), 2, 21, 3), np.float32), np.zeros(len(bodies)), (SIZE, SIZE))


def _truth(src_scale, src_feet, drv_scale, drv_feet, driving: np.ndarray) -> np.ndarray:
    """The driving skeleton scaled to the source's size with its top on the source's top, at the driving's x."""
    k = src_scale / drv_scale
    out = driving.copy()
    out[:, 0] = drv_feet[0] + k * (driving[:, 0] - drv_feet[0])
    top_s, top_d = src_feet[1] + src_scale * TOP, drv_feet[1] + drv_scale * TOP
    out[:, 1] = top_s + k * (driving[:, 1] - top_d)
    return out


def test_whole_people_get_the_official_rule_exactly():
    sm, dm = mask_of(1.0), mask_of(0.8, (300, 480))
    sim = A.visible_similarity(sm, dm, person(1.0), person(0.8, (300, 480)))
    official = A.silhouette_similarity(sm, dm)
    assert sim.dy == 0 and (sim.s, sim.fx, sim.fy) == pytest.approx(official)


@pytest.mark.parametrize("zoom", [1.5, 1.9, 2.6])  # the source cut at the thighs, the hips, the chest
def test_source_cut_by_the_bottom_edge_keeps_its_visible_scale(zoom):
    feet_s = (230.0, 20.0 + zoom * 420.0)  # the source, zoomed about a point above the head: its legs run off
    feet_d = (300.0, 480.0)
    src, drv = person(zoom, feet_s), person(1.0, feet_d)
    sm, dm = mask_of(zoom, feet_s), mask_of(1.0, feet_d)
    assert "bottom" in A.cut_edges(sm) and A.cut_level(sm, src) < 2 <= A.cut_level(dm, drv)
    sim = A.visible_similarity(sm, dm, src, drv)
    assert sim.s == pytest.approx(zoom, rel=0.06)
    # the official rule's silhouette heights would shrink the skeleton to the visible part
    assert A.silhouette_similarity(sm, dm)[0] < 0.8 * zoom
    tf = A.compute_alignment(_track([src]), _track([drv]), 1, sm[None], dm[None])
    assert tf.mode == "similarity"
    out = A.apply_alignment(_track([drv]), tf, sm[None], dm[None], source_body=src[None]).body[0]
    truth = _truth(zoom, feet_s, 1.0, feet_d, drv)
    err = np.hypot(*(out[:, :2] - truth[:, :2]).T)
    assert np.median(err) < 0.04 * zoom * 400
    # joints past the frame edge are kept (drawn past it), not dropped
    assert (out[:, 1] >= SIZE).any() and (out[out[:, 1] >= SIZE, 2] > 0).all()


def test_driving_cut_by_the_bottom_edge_is_scaled_to_the_source():
    feet_s, feet_d = (256.0, 480.0), (240.0, 20.0 + 1.9 * 420.0)
    src, drv = person(1.0, feet_s), person(1.9, feet_d)
    sm, dm = mask_of(1.0, feet_s), mask_of(1.9, feet_d)
    sim = A.visible_similarity(sm, dm, src, drv)
    assert sim.s == pytest.approx(1 / 1.9, rel=0.06)


def test_side_cut_does_not_move_the_scale():
    feet = (256.0, 490.0)
    src, sm = person(1.0, (40.0, 490.0)), mask_of(1.0, (40.0, 490.0))  # the left arm and shoulder out of frame
    assert "left" in A.cut_edges(sm)
    sim = A.visible_similarity(sm, mask_of(0.8, feet), src, person(0.8, feet))
    assert sim.s == pytest.approx(1.25, rel=0.05)


def test_limbs_mode_gives_every_limb_the_source_length():
    src = [person(1.0)]
    drv = [person(0.8, (300, 480), arms=1.4)]  # the driving person has long arms
    s_masks, d_masks = mask_of(1.0)[None], mask_of(0.8, (300, 480))[None]
    tf = A.compute_alignment(_track(src), _track(drv), 1, s_masks, d_masks, mode="limbs")
    out = A.apply_alignment(_track(drv), tf, s_masks, d_masks, source_body=np.stack(src)).body[0]
    for a, b in ((2, 3), (3, 4), (8, 9), (1, 8)):
        assert np.hypot(*(out[a, :2] - out[b, :2])) == pytest.approx(np.hypot(*(src[0][a, :2] - src[0][b, :2])),
                                                                      rel=0.08)
    sim = A.compute_alignment(_track(src), _track(drv), 1, s_masks, d_masks)
    plain = A.apply_alignment(_track(drv), sim, s_masks, d_masks, source_body=np.stack(src)).body[0]
    assert np.hypot(*(plain[2, :2] - plain[3, :2])) > 1.2 * np.hypot(*(src[0][2, :2] - src[0][3, :2]))


def test_pose_track_driving_neck_mode_when_the_source_is_cut():
    feet_s = (230.0, 20.0 + 1.9 * 420.0)
    src, drv = person(1.9, feet_s), person(1.0, (300.0, 480.0))
    tf = A.compute_alignment(_track([src]), _track([drv]), 1)
    assert tf.mode == "neck" and tf.global_scale == pytest.approx(1.9, rel=0.05)
    out = A.apply_alignment(_track([drv]), tf).body[0]
    assert out[1, 1] == pytest.approx(src[1, 1], abs=2)  # the necks matched
    whole = A.compute_alignment(_track([person(1.0)]), _track([drv]), 1)
    assert whole.mode == "ground"
    with pytest.raises(ValueError, match="alignment mode"):
        A.compute_alignment(_track([src]), _track([drv]), 1, mode="stretch")
    assert set(A.ALIGN_MODES) <= set(A.MODES) and A.DEFAULT_ALIGN_MODE in A.ALIGN_MODES


def test_transform_json_keeps_its_fields():
    tf = A.compute_alignment(_track([person(1.0)]), _track([person(0.8, (300, 480))]), 1,
                             mask_of(1.0)[None], mask_of(0.8, (300, 480))[None], mode="limbs")
    back = A.AlignTransform.from_dict(tf.to_dict())
    assert back == tf and back.mode == "limbs" and "3-4" in back.bone_scale
