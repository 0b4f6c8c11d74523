"""Hands attached to the right wrist: the wrist-distance gate, left/right swap, no hand without a wrist."""
import numpy as np

from pipelines.conditioning.poses.mediapipe_backend import attach_hands


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
