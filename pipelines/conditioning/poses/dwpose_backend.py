"""DWPose (ONNX, from user-given local files) mapped to OpenPose-18 + hands.

The DWPose release ships two ONNX models: a YOLOX person detector (``yolox_l.onnx``: input ``(1, 3, 640, 640)``
letter-boxed BGR 0-255, output ``(1, A, 85)`` with sigmoid-activated objectness/class scores and raw grid-relative
boxes) and a top-down whole-body pose model (``dw-ll_ucoco_384.onnx``: input ``(1, 3, 384, 288)`` normalised RGB,
outputs ``simcc_x (1, 133, 576)`` and ``simcc_y (1, 133, 768)`` — SimCC with split ratio 2). COCO-WholeBody's 133
key points map to the OpenPose-18 body (neck = mid-shoulders) and the two 21-point hands (same order as OpenPose).

Paths: ``model_path``/``pose_model_path`` and ``det_model_path`` (or ``$MF_DWPOSE_POSE`` / ``$MF_DWPOSE_DET``, so the
plain ``backend="dwpose"`` of the pipeline works). Without a detector the whole frame is the
person box. Nothing is downloaded: a missing file raises
:class:`pipelines.media.errors.InputError` naming it. DWPose gives no segmentation (``masks`` is ``None``).
"""
from __future__ import annotations

import logging
import os

import numpy as np

from pipelines.conditioning.poses.base import PoseExtractor
from pipelines.conditioning.poses.tracking import choose_person
from pipelines.media.errors import InputError

log = logging.getLogger(__name__)

# OpenPose-18 index -> COCO-WholeBody body index (neck, 1, is the mean of both shoulders)
COCO_TO_OPENPOSE = {0: 0, 2: 6, 3: 8, 4: 10, 5: 5, 6: 7, 7: 9, 8: 12, 9: 14, 10: 16, 11: 11, 12: 13, 13: 15,
                    14: 2, 15: 1, 16: 4, 17: 3}
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
SIMCC_SPLIT = 2.0
BOX_PADDING = 1.25
DET_STRIDES = (8, 16, 32)


def wholebody_to_openpose(kpts: np.ndarray, scores: np.ndarray, thr: float = 0.3):
    """(133, 2) pixels + (133,) scores → body (18, 3) and hands (2, 21, 3) [left, right]; scores ≤ thr → 0."""
    body = np.zeros((18, 3), np.float32)
    for op, cc in COCO_TO_OPENPOSE.items():
        body[op] = (kpts[cc, 0], kpts[cc, 1], scores[cc])
    body[1] = ((kpts[5, 0] + kpts[6, 0]) / 2, (kpts[5, 1] + kpts[6, 1]) / 2, min(scores[5], scores[6]))
    hands = np.zeros((2, 21, 3), np.float32)
    for k, sl in enumerate((LEFT_HAND, RIGHT_HAND)):
        hands[k, :, :2] = kpts[sl]
        hands[k, :, 2] = scores[sl]
    body[body[:, 2] <= thr, 2] = 0.0
    hands[hands[..., 2] <= thr, 2] = 0.0
    return body, hands


def _check_file(path, what: str) -> str:
    if not path:
        raise InputError("<dwpose>", f"no {what} ONNX path given (pass a local file, e.g. dw-ll_ucoco_384.onnx)")
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise InputError(path, f"DWPose {what} ONNX model not found")
    return path


def _session(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    try:
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for bad files
        raise InputError(path, f"not a loadable ONNX model: {exc}") from None


def _nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = np.argsort(-scores)
    keep = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        iou = inter / np.maximum(area(boxes[i]) + area(boxes[order[1:]]) - inter, 1e-6)
        order = order[1:][iou <= thr]
    return keep


def decode_yolox(pred: np.ndarray, input_hw=(640, 640), strides=DET_STRIDES) -> np.ndarray:
    """Raw YOLOX output (A, 5 + C) → (A, 4) boxes x1y1x2y2 in input pixels and (A,) person scores."""
    grids, expanded = [], []
    for s in strides:
        hs, ws = input_hw[0] // s, input_hw[1] // s
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        expanded.append(np.full((hs * ws, 1), s))
    grid = np.concatenate(grids).astype(np.float32)
    stride = np.concatenate(expanded).astype(np.float32)
    if len(grid) != len(pred):
        raise ValueError(f"detector output has {len(pred)} anchors, expected {len(grid)} for {input_hw}")
    xy = (pred[:, :2] + grid) * stride
    wh = np.exp(np.clip(pred[:, 2:4], -10, 10)) * stride
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    scores = pred[:, 4] * pred[:, 5]
    return boxes, scores


class DWPoseExtractor(PoseExtractor):
    """DWPose whole-body pose from local ONNX files; follows one person (the most prominent, then the nearest)."""

    name = "dwpose"

    def __init__(self, model_path: str | None = None, det_model_path: str | None = None,
                 pose_model_path: str | None = None, det_score: float = 0.3, nms: float = 0.45,
                 keypoint_score: float = 0.3):
        det_model_path = det_model_path or os.environ.get("MF_DWPOSE_DET") or None
        self.pose_path = _check_file(pose_model_path or model_path or os.environ.get("MF_DWPOSE_POSE"), "pose model")
        self.det_path = _check_file(det_model_path, "detector") if det_model_path else None
        self.det_score, self.nms, self.keypoint_score = float(det_score), float(nms), float(keypoint_score)
        self._pose = _session(self.pose_path)
        self._det = _session(self.det_path) if self.det_path else None
        shape = self._pose.get_inputs()[0].shape
        self.input_hw = (int(shape[2]), int(shape[3])) if all(isinstance(v, int) for v in shape[2:4]) else (384, 288)
        if self._det is not None:
            dshape = self._det.get_inputs()[0].shape
            self.det_hw = (int(dshape[2]), int(dshape[3])) if all(isinstance(v, int) for v in dshape[2:4]) \
                else (640, 640)
        self._previous = None

    def reset(self) -> None:
        self._previous = None

    # -- detector ------------------------------------------------------------------------------------------
    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Person boxes (K, 4) x1y1x2y2 in frame pixels (the whole frame when there is no detector)."""
        import cv2

        h, w = frame.shape[:2]
        if self._det is None:
            return np.array([[0, 0, w, h]], np.float32)
        dh, dw = self.det_hw
        r = min(dh / h, dw / w)
        padded = np.full((dh, dw, 3), 114, np.uint8)
        padded[: int(h * r), : int(w * r)] = cv2.resize(frame[..., ::-1], (int(w * r), int(h * r)),
                                                        interpolation=cv2.INTER_LINEAR)
        blob = padded.transpose(2, 0, 1)[None].astype(np.float32)
        pred = self._det.run(None, {self._det.get_inputs()[0].name: blob})[0][0]
        boxes, scores = decode_yolox(pred, (dh, dw))
        ok = scores > self.det_score
        boxes, scores = boxes[ok] / r, scores[ok]
        if not len(boxes):
            return np.zeros((0, 4), np.float32)
        return boxes[_nms(boxes, scores, self.nms)].astype(np.float32)

    # -- pose ----------------------------------------------------------------------------------------------
    def _crop(self, frame: np.ndarray, box: np.ndarray):
        import cv2

        ih, iw = self.input_hw
        x1, y1, x2, y2 = box
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        bw, bh = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
        aspect = iw / ih
        if bw > bh * aspect:
            bh = bw / aspect
        else:
            bw = bh * aspect
        # affine: input pixel (u, v) <- frame (cx - bw/2 + u * bw/iw, cy - bh/2 + v * bh/ih)
        sx, sy = iw / bw, ih / bh
        m = np.array([[sx, 0, -(cx - bw / 2) * sx], [0, sy, -(cy - bh / 2) * sy]], np.float32)
        crop = cv2.warpAffine(frame, m, (iw, ih), flags=cv2.INTER_LINEAR)
        return crop, (cx - bw / 2, cy - bh / 2, bw / iw, bh / ih)

    def pose(self, frame: np.ndarray, box: np.ndarray):
        """Whole-body key points of the person in ``box``: (133, 2) frame pixels and (133,) scores."""
        crop, (ox, oy, kx, ky) = self._crop(frame, box)
        blob = ((crop.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)[None]
        outs = self._pose.run(None, {self._pose.get_inputs()[0].name: blob})
        names = [o.name for o in self._pose.get_outputs()]
        simcc_x = outs[names.index("simcc_x")] if "simcc_x" in names else outs[0]
        simcc_y = outs[names.index("simcc_y")] if "simcc_y" in names else outs[1]
        sx, sy = simcc_x[0], simcc_y[0]
        u = np.argmax(sx, 1).astype(np.float32) / SIMCC_SPLIT
        v = np.argmax(sy, 1).astype(np.float32) / SIMCC_SPLIT
        scores = np.minimum(sx.max(1), sy.max(1)).astype(np.float32)
        kpts = np.stack([ox + u * kx, oy + v * ky], 1)
        return kpts, scores

    def extract(self, frames: np.ndarray):
        frames = np.asarray(frames)
        n = len(frames)
        body = np.zeros((n, 18, 3), np.float32)
        hands = np.zeros((n, 2, 21, 3), np.float32)
        for i in range(n):
            h, w = frames[i].shape[:2]
            cands = []
            for box in self.detect(frames[i]):
                kpts, scores = self.pose(frames[i], box)
                b, hd = wholebody_to_openpose(kpts, scores, self.keypoint_score)
                inside = (b[:, 0] >= 0) & (b[:, 0] < w) & (b[:, 1] >= 0) & (b[:, 1] < h)
                b[~inside, 2] = 0.0
                cands.append((b, hd))
            k = choose_person([c[0] for c in cands], self._previous)
            if k < 0:
                continue
            body[i], hands[i] = cands[k]
            self._previous = body[i]
        return body, hands, None
