"""Hands attached to the right wrist: the wrist-distance gate, left/right swap, no hand without a wrist."""
import numpy as np

from pipelines.conditioning.poses.hands import attach_hands


def _body():
    b = np.zeros((18, 3), np.float32)
    b[6] = (100, 100, 1)  # left elbow
    b[7] = (100, 150, 1)  # left wrist (forearm 50 px)
    b[3] = (300, 100, 1)  # right elbow
    b[4] = (300, 150, 1)  # right wrist
    return b


def _hand(x, y):
    h = np.zeros((21, 3), np.float32)
    h[:, 0] = x + np.arange(21)
    h[:, 1] = y + np.arange(21)
    h[:, 2] = 1
    return h


def test_hands_go_to_the_nearest_wrist_and_are_swapped():
    out = attach_hands(_body(), [_hand(302, 152), _hand(98, 155)])
    assert out[0, 0, 0] == 98 and out[1, 0, 0] == 302  # [left, right] whatever the candidate order


def test_far_hand_rejected_and_missing_wrist_gets_no_hand():
    body = _body()
    out = attach_hands(body, [_hand(100, 20)])  # above the head: 130 px from the wrist > 0.6 x 50
    assert not out[..., 2].any()
    body[4, 2] = 0.1  # right wrist not visible
    out = attach_hands(body, [_hand(300, 152)])
    assert not out[..., 2].any()


def test_one_candidate_per_wrist_nearest_wins():
    out = attach_hands(_body(), [_hand(110, 160), _hand(101, 151)])
    assert out[0, 0, 0] == 101 and not out[1, ..., 2].any()


def test_wrist_crops_sit_beyond_the_wrist_and_map_back():
    from pipelines.conditioning.poses.hands import CROP_SIZE, wrist_crops

    body = _body()
    crops = wrist_crops(body, 400, 300)
    assert len(crops) == 2
    left = crops[0]
    assert abs(left.x0 + left.side / 2 - 100) < 1e-3 and abs(left.y0 + left.side / 2 - 175) < 1e-3  # 0.5 forearm on
    assert left.side == 100  # two forearm lengths
    frame = np.zeros((300, 400, 3), np.uint8)
    frame[160:163, 90:93] = 255  # a bright 3x3 spot (centre 91, 161) inside the left crop
    view = left.image(frame)
    assert view.shape == (CROP_SIZE, CROP_SIZE, 3)
    ys, xs = np.nonzero(view[..., 0] > 128)
    pts = np.zeros((21, 3), np.float32)
    pts[:, 0], pts[:, 1], pts[:, 2] = xs.mean(), ys.mean(), 1
    back = left.to_frame(pts, 400, 300)
    assert abs(back[0, 0] - 91) < 1.5 and abs(back[0, 1] - 161) < 1.5 and back[0, 2] == 1
    pts[:, 0] = -CROP_SIZE  # left of the frame once mapped back
    assert left.to_frame(pts, 400, 300)[0, 2] == 0
    body[6, 2] = 0.1  # left elbow not visible: no crop for that wrist (the forearm sets the size)
    assert len(wrist_crops(body, 400, 300)) == 1
