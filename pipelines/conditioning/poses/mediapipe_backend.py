"""MediaPipe Holistic (legacy ``mp.solutions``; ships its models, fully offline) mapped to OpenPose-18 + hands.

One graph gives the BlazePose body (33 landmarks), both hands (21 points in OpenPose order) and the person
segmentation. Only ``model_complexity=1`` works offline. MediaPipe is a single-person model that follows whichever
person its detector scores highest (``static_image_mode=False``); with ``select_subject`` (default) a clip where a few
frames show more than one person is run through :class:`~pipelines.conditioning.poses.subject.SubjectFilter`: the
most prominent person is kept and followed, everybody else is painted out of the frames Holistic sees, so the
landmarks, hands and segmentation are the subject's alone.

Fidelity to the official (DWPose/OpenPose) skeletons, measured on the fixture cases (``benchmarks/prepare_fixtures``):

* MediaPipe's own landmark smoothing is off: at the official 8 fps it lags fast limbs by several pixels. Temporal
  smoothing is done afterwards by
  :func:`pipelines.conditioning.poses.tracking.smooth` with a cut-off in Hz, so it adapts to the
  frame rate.
* Mirror test (``mirror=True``, default): a second, stateless BlazePose pass on the horizontally mirrored frame; its
  landmarks, mirrored back with left/right exchanged, are averaged with the tracked ones (the usual flip test of
  pose estimators; the two passes have independent crops and errors). Visibility comes from the tracked pass. When
  the mirrored pass lands on somebody else (landmarks far from the tracked person) it is ignored.
* Hands (measured with ``benchmarks/prepare_validation.py``: source hand-stroke F1 0.54 → 0.68 → 0.75 on the
  fixtures, 0.57 → 0.66 → 0.72 on the validation set, the last step from the wrist crops): candidates are
  Holistic's two hands plus a stateless ``mp.solutions.hands`` pass (``model_complexity=1``, ships offline;
  confidence gate ``HAND_MIN_SCORE``) on the frame and on a magnified crop around each wrist
  (:mod:`~pipelines.conditioning.poses.hands`; gate ``CROP_MIN_SCORE``, lower because the crop already sits on a
  wrist); :func:`attach_hands` gives each visible body wrist the nearest candidate whose root lies within
  ``HAND_MAX_WRIST_DIST`` forearm lengths, so a hand sits on its wrist, left/right follow the body, and no hand is
  drawn where the body has no wrist.
* Joint definitions: BlazePose's ear points sit near the ear canal, COCO/OpenPose ears on the outer ear — each ear
  is moved outward along its eye→ear direction (``EAR_EXTENSION``); BlazePose hip centres sit lower than
  COCO/OpenPose hips (``HIP_SHIFT``).
* Pixel convention: MediaPipe's normalised coordinates put 0 and 1 on the image's outer edges, OpenPose/DWPose
  keypoints (and cv2 drawing) put pixel centres at integers, so a landmark maps to ``x * W - 0.5``
  (:func:`~pipelines.conditioning.poses.base.to_pixels`; bodies and hands alike). Measured with
  ``benchmarks/prepare_validation.py --frames 24``: source pose error 5.79 → 5.57 px on the fixtures and
  5.67 → 5.49 px on the validation set (a mirrored video confirms the sign: our x bias was +0.35 px).
"""
from __future__ import annotations

import logging

import numpy as np

from pipelines.conditioning.poses.base import PoseExtractor, to_pixels
from pipelines.conditioning.poses.hands import (
    CROP_MIN_SCORE,
    HAND_MIN_SCORE,
    Crop,
    attach_hands,
    hand_points,
    wrist_crops,
)
from pipelines.conditioning.poses.subject import SubjectFilter

log = logging.getLogger(__name__)

# OpenPose-18 index -> BlazePose index (neck = mean of both shoulders, handled separately)
BLAZE_TO_OPENPOSE = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25, 13: 27,
                     14: 5, 15: 2, 16: 8, 17: 7}


# Fraction of the hip→shoulder vector. Measured as the mean hip offset (ours minus official, in torso lengths) on
# four videos, the two fixture sources and their two driving videos: the sources want ≈ 0.06, the drivers ≈ 0.0,
# so the midpoint. Tuned on the fixtures' videos; on the validation set (fixtures under transforms, same people)
# 0.0 / 0.03 / 0.045 / 0.06 gave source 6.16 / 5.87 / 5.90 / 6.03 px and aligned 6.70 / 7.15 / 7.46 / 7.81 px.
HIP_SHIFT = 0.03
# BlazePose ear -> OpenPose ear: ear + EAR_EXTENSION * (ear - eye), per side (BlazePose 7/8 ears, 2/5 eyes)
EAR_EXTENSION = 0.4
EAR_EYE = ((7, 2), (8, 5))
# BlazePose left/right landmark pairs (for the mirror test)
MIRROR_PAIRS = ((1, 4), (2, 5), (3, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20), (21, 22),
                (23, 24), (25, 26), (27, 28), (29, 30), (31, 32))
MIRROR_PERM = np.arange(33)
for _a, _b in MIRROR_PAIRS:
    MIRROR_PERM[_a], MIRROR_PERM[_b] = _b, _a
# the mirrored pass is used only when it agrees with the tracked person: mean landmark distance (torso points,
# normalised coordinates) at most this fraction of the shoulder-to-hip size
MIRROR_MAX_DISAGREEMENT = 0.35
BORDER_MARGIN = 0.12
BORDER_MIN_VISIBILITY = 0.05

def blaze_to_openpose(lm: np.ndarray, width: int, height: int, min_visibility: float = 0.5) -> np.ndarray:
    """(33, 4) normalised [x, y, z, visibility] → (18, 3) [x_px, y_px, score] (pixel centres at integers:
    :func:`~pipelines.conditioning.poses.base.to_pixels`); off-frame points get score 0."""
    out = np.zeros((18, 3), np.float32)
    lm = np.array(lm, np.float32, copy=True)
    for ear, eye in EAR_EYE:
        lm[ear, :2] += EAR_EXTENSION * (lm[ear, :2] - lm[eye, :2])
    xs, ys = to_pixels(lm[:, 0], lm[:, 1], width, height)
    for op, bp in BLAZE_TO_OPENPOSE.items():
        out[op] = (xs[bp], ys[bp], lm[bp, 3])
    out[1] = ((xs[11] + xs[12]) / 2, (ys[11] + ys[12]) / 2, min(lm[11, 3], lm[12, 3]))
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


def unmirror_landmarks(lm: np.ndarray) -> np.ndarray:
    """Landmarks (33, 4) found on a horizontally mirrored frame → the same landmarks on the original frame."""
    out = np.array(lm, np.float32)[MIRROR_PERM].copy()
    out[:, 0] = 1.0 - out[:, 0]
    return out


def merge_mirrored(lm: np.ndarray, mirrored: np.ndarray | None, aspect: float = 1.0) -> np.ndarray:
    """Average tracked landmarks ``lm`` (33, 4) with :func:`unmirror_landmarks` output (visibility from ``lm``);
    ``lm`` unchanged when ``mirrored`` is None or describes somebody else. ``aspect`` = width / height."""
    if mirrored is None:
        return lm
    torso = [11, 12, 23, 24]
    scale = np.array([aspect, 1.0], np.float32)
    size = np.hypot(*((lm[[11, 12], :2].mean(0) - lm[[23, 24], :2].mean(0)) * scale))
    gap = np.hypot(*((lm[torso, :2] - mirrored[torso, :2]) * scale).T).mean()
    if not np.isfinite(gap) or gap > MIRROR_MAX_DISAGREEMENT * max(float(size), 1e-3):
        return lm
    out = lm.copy()
    out[:, :3] = (lm[:, :3] + mirrored[:, :3]) / 2
    return out


def _landmarks(result_landmarks) -> np.ndarray | None:
    if result_landmarks is None:
        return None
    return np.array([(p.x, p.y, p.z, p.visibility) for p in result_landmarks.landmark], np.float32)


class MediaPipeExtractor(PoseExtractor):
    """Holistic (tracked body, hands, segmentation) plus an optional stateless mirrored body pass (see the module
    docstring). ``reset()`` forgets the tracking state; the graphs are kept and reused (building them per clip
    costs time and memory)."""

    name = "mediapipe"

    def __init__(self, min_visibility: float = 0.5, segmentation: bool = True, hands: bool = True,
                 min_detection_confidence: float = 0.5, mirror: bool = True, smooth_landmarks: bool = False,
                 hand_detector: bool = True, select_subject: bool = True):
        self.min_visibility = float(min_visibility)
        self.segmentation = bool(segmentation)
        self.hands = bool(hands)
        self.min_detection_confidence = float(min_detection_confidence)
        self.mirror = bool(mirror)
        self.smooth_landmarks = bool(smooth_landmarks)
        self.hand_detector = bool(hand_detector)
        self.select_subject = bool(select_subject)
        self._hands_graph = None
        self._graph = None
        self._static_graph = None
        self._dirty = False

    def _get(self):
        if self._graph is None:
            import mediapipe as mp

            self._graph = mp.solutions.holistic.Holistic(
                static_image_mode=False, model_complexity=1, smooth_landmarks=self.smooth_landmarks,
                enable_segmentation=self.segmentation, smooth_segmentation=True, refine_face_landmarks=False,
                min_detection_confidence=self.min_detection_confidence, min_tracking_confidence=0.5)
        return self._graph

    def _get_static(self):
        """The stateless body graph of the mirror test and of the subject search."""
        if self._static_graph is None:
            import mediapipe as mp

            # stateless: each frame is found afresh (no tracking state to carry or reset)
            self._static_graph = mp.solutions.pose.Pose(
                static_image_mode=True, model_complexity=1, enable_segmentation=False,
                min_detection_confidence=self.min_detection_confidence)
        return self._static_graph

    def _get_hands(self, crop: bool = False):
        """The stateless hand graphs: one for whole frames, one with a lower gate for wrist crops."""
        if self._hands_graph is None:
            import mediapipe as mp

            # stateless, model_complexity=1 (ships with the package; 0 may try to download)
            self._hands_graph = tuple(mp.solutions.hands.Hands(
                static_image_mode=True, max_num_hands=4, model_complexity=1, min_detection_confidence=score)
                for score in (HAND_MIN_SCORE, CROP_MIN_SCORE))
        return self._hands_graph[1 if crop else 0]

    def reset(self) -> None:
        """Forget the tracking state (the next frame is searched afresh); the graphs themselves are kept."""
        if self._graph is not None and self._dirty:
            self._graph.reset()
        self._dirty = False

    def close(self) -> None:
        for g in (self._graph, self._static_graph, *(self._hands_graph or ())):
            if g is not None:
                g.close()
        self._graph = self._static_graph = self._hands_graph = None
        self._dirty = False

    def _detect_hands(self, frame: np.ndarray, crop: Crop | None = None) -> list[np.ndarray]:
        """Hands found by the stand-alone detector in ``frame`` (or in ``crop``'s magnified view of it), as (21, 3)
        frame pixels + inside flag; only hands at or above ``HAND_MIN_SCORE``."""
        image = frame if crop is None else crop.image(frame)
        res = self._get_hands(crop is not None).process(np.ascontiguousarray(image))
        h, w = image.shape[:2]
        gate = HAND_MIN_SCORE if crop is None else CROP_MIN_SCORE
        out = []
        for hl, hd in zip(res.multi_hand_landmarks or (), res.multi_handedness or ()):
            if hd.classification[0].score >= gate:
                pts = hand_points(hl, w, h)
                out.append(pts if crop is None else crop.to_frame(pts, *frame.shape[1::-1]))
        return out

    def _hands_for(self, frame: np.ndarray, res, body: np.ndarray) -> np.ndarray:
        """(2, 21, 3) hands of ``body`` from Holistic's own hands and the stand-alone detector on the whole frame and
        on a crop around each visible wrist (each source finds hands the others miss: measured on the validation
        set, dropping the whole-frame pass loses 0.03-0.06 hand F1)."""
        h, w = frame.shape[:2]
        cands = [hand_points(hl, w, h) for hl in (res.left_hand_landmarks, res.right_hand_landmarks)
                 if hl is not None]
        if self.hand_detector:
            cands += self._detect_hands(frame)
            for crop in wrist_crops(body, w, h, self.min_visibility):
                cands += self._detect_hands(frame, crop)
        return attach_hands(body, cands, self.min_visibility)

    def _detect_one(self, image: np.ndarray) -> np.ndarray | None:
        return _landmarks(self._get_static().process(np.ascontiguousarray(image)).pose_landmarks)

    def extract(self, frames: np.ndarray):
        frames = np.asarray(frames)
        n, h, w = frames.shape[:3]
        body = np.zeros((n, 18, 3), np.float32)
        hands = np.zeros((n, 2, 21, 3), np.float32)
        masks = np.zeros((n, h, w), np.float32) if self.segmentation else None
        g = self._get()
        subject = SubjectFilter(self._detect_one)
        if self.select_subject:
            subject.scan(frames)
        for i in range(n):
            frame = np.ascontiguousarray(subject(frames[i]))
            res = g.process(frame)
            self._dirty = True
            lm = _landmarks(res.pose_landmarks)
            if lm is None:
                continue
            if self.mirror:
                mres = self._get_static().process(np.ascontiguousarray(frame[:, ::-1]))
                mlm = _landmarks(mres.pose_landmarks)
                lm = merge_mirrored(lm, None if mlm is None else unmirror_landmarks(mlm), w / h)
            body[i] = blaze_to_openpose(lm, w, h, self.min_visibility)
            if self.hands:
                hands[i] = self._hands_for(frame, res, body[i])
            if masks is not None and res.segmentation_mask is not None:
                masks[i] = res.segmentation_mask
        return body, hands, masks
