"""MediaPipe Holistic (legacy ``mp.solutions``; ships its models, fully offline) mapped to OpenPose-18 + hands.

One graph gives the BlazePose body (33 landmarks), both hands (21 points in OpenPose order) and the person
segmentation. Only ``model_complexity=1`` works offline. MediaPipe is a single-person model that follows the most
prominent person from frame to frame (``static_image_mode=False``).
"""
from __future__ import annotations

import logging

import numpy as np

from pipelines.poses.base import PoseExtractor

log = logging.getLogger(__name__)

# OpenPose-18 index -> BlazePose index (neck = mean of both shoulders, handled separately)
BLAZE_TO_OPENPOSE = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25, 13: 27,
                     14: 5, 15: 2, 16: 8, 17: 7}


HIP_SHIFT = 0.06
BORDER_MARGIN = 0.12
BORDER_MIN_VISIBILITY = 0.05


def blaze_to_openpose(lm: np.ndarray, width: int, height: int, min_visibility: float = 0.5) -> np.ndarray:
    """(33, 4) normalised [x, y, z, visibility] → (18, 3) [x_px, y_px, score]; off-frame points get score 0."""
    out = np.zeros((18, 3), np.float32)
    for op, bp in BLAZE_TO_OPENPOSE.items():
        out[op] = (lm[bp, 0] * width, lm[bp, 1] * height, lm[bp, 3])
    out[1] = ((lm[11, 0] + lm[12, 0]) / 2 * width, (lm[11, 1] + lm[12, 1]) / 2 * height, min(lm[11, 3], lm[12, 3]))
    # BlazePose hip centres sit lower than COCO/OpenPose hips: move them a little toward the shoulders.
    for hip, shoulder in ((8, 2), (11, 5)):
        out[hip, :2] += HIP_SHIFT * (out[shoulder, :2] - out[hip, :2])
    # OpenPose-style detectors place joints just beyond the border (feet cut by the frame) on the border:
    # clamp points that lie slightly outside (≤ BORDER_MARGIN of the frame size) and are plausibly there.
    mx, my = BORDER_MARGIN * width, BORDER_MARGIN * height
    near = (out[:, 0] >= -mx) & (out[:, 0] < width + mx) & (out[:, 1] >= -my) & (out[:, 1] < height + my)
    inside = (out[:, 0] >= 0) & (out[:, 0] < width) & (out[:, 1] >= 0) & (out[:, 1] < height)
    clamp = near & ~inside & (out[:, 2] >= BORDER_MIN_VISIBILITY)
    out[clamp, 0] = np.clip(out[clamp, 0], 2, width - 3)
    out[clamp, 1] = np.clip(out[clamp, 1], 2, height - 3)
    out[clamp, 2] = np.maximum(out[clamp, 2], min_visibility)
    out[~(inside | clamp) | (out[:, 2] < min_visibility), 2] = 0.0
    return out


class MediaPipeExtractor(PoseExtractor):
    name = "mediapipe"

    def __init__(self, min_visibility: float = 0.5, segmentation: bool = True, hands: bool = True,
                 min_detection_confidence: float = 0.5):
        self.min_visibility = float(min_visibility)
        self.segmentation = bool(segmentation)
        self.hands = bool(hands)
        self.min_detection_confidence = float(min_detection_confidence)
        self._graph = None

    def _get(self):
        if self._graph is None:
            import mediapipe as mp

            self._graph = mp.solutions.holistic.Holistic(
                static_image_mode=False, model_complexity=1, smooth_landmarks=True,
                enable_segmentation=self.segmentation, smooth_segmentation=True, refine_face_landmarks=False,
                min_detection_confidence=self.min_detection_confidence, min_tracking_confidence=0.5)
        return self._graph

    def reset(self) -> None:
        if self._graph is not None:
            self._graph.close()
        self._graph = None

    def extract(self, frames: np.ndarray):
        frames = np.asarray(frames)
        n, h, w = frames.shape[:3]
        body = np.zeros((n, 18, 3), np.float32)
        hands = np.zeros((n, 2, 21, 3), np.float32)
        masks = np.zeros((n, h, w), np.float32) if self.segmentation else None
        g = self._get()
        for i in range(n):
            res = g.process(np.ascontiguousarray(frames[i]))
            if res.pose_landmarks is None:
                continue
            lm = np.array([(p.x, p.y, p.z, p.visibility) for p in res.pose_landmarks.landmark], np.float32)
            body[i] = blaze_to_openpose(lm, w, h, self.min_visibility)
            if self.hands:
                for k, hl in enumerate((res.left_hand_landmarks, res.right_hand_landmarks)):
                    if hl is not None:
                        pts = np.array([(p.x * w, p.y * h) for p in hl.landmark], np.float32)
                        inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
                        hands[i, k, :, :2] = pts
                        hands[i, k, :, 2] = inside.astype(np.float32)
            if masks is not None and res.segmentation_mask is not None:
                masks[i] = res.segmentation_mask
        return body, hands, masks
