"""DWPose ONNX backend: the decode path end to end through onnxruntime with tiny models built here (no weights),
and the official alignment / predicted-mask rule on the fixtures."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from pipelines.conditioning.poses import get_extractor  # noqa: E402
from pipelines.conditioning.poses.dwpose_backend import DWPoseExtractor, wholebody_to_openpose  # noqa: E402
from pipelines.media.errors import InputError  # noqa: E402


def _const_model(path, in_name, in_shape, outputs: dict):
    """An ONNX model whose outputs are fixed tensors (the input still feeds the graph: out = c + 0 * mean(in))."""
    nodes = [helper.make_node("ReduceMean", [in_name], ["m"], keepdims=0),
             helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
             helper.make_node("Mul", ["m", "zero"], ["m0"])]
    outs = []
    for name, arr in outputs.items():
        arr = np.asarray(arr, np.float32)
        nodes.append(helper.make_node("Constant", [], [name + "_c"],
                                      value=helper.make_tensor(name + "_t", TensorProto.FLOAT, arr.shape,
                                                               arr.reshape(-1).tolist())))
        nodes.append(helper.make_node("Add", [name + "_c", "m0"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_shape)],
                              outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


IH, IW = 384, 288


def _pose_model(tmp_path, uv: np.ndarray, score: float = 0.9):
    """133 key points at input pixels ``uv`` (133, 2) with peak value ``score``."""
    sx = np.zeros((1, 133, IW * 2), np.float32)
    sy = np.zeros((1, 133, IH * 2), np.float32)
    for k, (u, v) in enumerate(uv):
        sx[0, k, int(round(u * 2))] = score
        sy[0, k, int(round(v * 2))] = score
    return _const_model(tmp_path / "pose.onnx", "input", [1, 3, IH, IW], {"simcc_x": sx, "simcc_y": sy})


def _det_model(tmp_path, box):
    """A YOLOX-style detector finding one person at ``box`` (x1, y1, x2, y2 in 640² input pixels)."""
    n = 80 * 80 + 40 * 40 + 20 * 20
    pred = np.zeros((1, n, 85), np.float32)
    cx, cy, w, h = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
    gx, gy = int(cx // 32), int(cy // 32)
    row = 80 * 80 + 40 * 40 + gy * 20 + gx
    pred[0, row, :4] = (cx / 32 - gx, cy / 32 - gy, np.log(w / 32), np.log(h / 32))
    pred[0, row, 4:6] = 0.95
    return _const_model(tmp_path / "det.onnx", "images", [1, 3, 640, 640], {"output": pred})


def _uv():
    rng = np.random.default_rng(0)
    return np.stack([rng.uniform(20, IW - 20, 133), rng.uniform(20, IH - 20, 133)], 1).round(1)


def test_dwpose_whole_frame_decodes_simcc(tmp_path):
    uv = _uv()
    ext = DWPoseExtractor(model_path=_pose_model(tmp_path, uv))
    # frame of the model's aspect: the padded whole-frame box maps input (u, v) to frame ((u/IW-.5)*1.25W+W/2, ..)
    h, w = 480, 360
    frames = np.zeros((2, h, w, 3), np.uint8)
    body, hands, masks = ext.extract(frames)
    assert masks is None and body.shape == (2, 18, 3) and hands.shape == (2, 2, 21, 3)
    fx = (uv[:, 0] / IW - 0.5) * 1.25 * w + w / 2
    fy = (uv[:, 1] / IH - 0.5) * 1.25 * h + h / 2
    # nose (COCO 0), right shoulder (OpenPose 2 <- COCO 6), left hand tip (COCO 91 + 20)
    for op, cc in ((0, 0), (2, 6), (9, 14)):
        if body[0, op, 2] > 0:
            np.testing.assert_allclose(body[0, op, :2], (fx[cc], fy[cc]), atol=1.5)
    np.testing.assert_allclose(body[0, 1, :2], ((fx[5] + fx[6]) / 2, (fy[5] + fy[6]) / 2), atol=1.5)
    visible_hand = hands[0, 0, 20, 2] > 0
    if visible_hand:
        np.testing.assert_allclose(hands[0, 0, 20, :2], (fx[111], fy[111]), atol=1.5)
    assert np.isclose(body[0, 0, 2], 0.9, atol=1e-3)


def test_dwpose_with_detector_crops_the_box(tmp_path):
    uv = np.tile([[IW / 2, IH / 2]], (133, 1))  # every key point at the crop centre
    det = _det_model(tmp_path, (100, 80, 220, 240))  # in 640² input pixels
    ext = DWPoseExtractor(pose_model_path=_pose_model(tmp_path, uv), det_model_path=det)
    frames = np.zeros((1, 320, 320, 3), np.uint8)  # letter-box ratio 2 → box (50, 40, 110, 120) in the frame
    boxes = ext.detect(frames[0])
    np.testing.assert_allclose(boxes[0], (50, 40, 110, 120), atol=0.5)
    body, hands, _ = ext.extract(frames)
    np.testing.assert_allclose(body[0, 0, :2], (80, 80), atol=1.5)  # the box centre


def test_dwpose_missing_paths_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv("MF_DWPOSE_POSE", raising=False)
    monkeypatch.delenv("MF_DWPOSE_DET", raising=False)
    with pytest.raises(InputError, match="no pose model ONNX path"):
        DWPoseExtractor()
    missing = tmp_path / "nope" / "dw-ll_ucoco_384.onnx"
    with pytest.raises(InputError, match="dw-ll_ucoco_384.onnx: DWPose pose model ONNX model not found"):
        get_extractor("dwpose", model_path=str(missing))
    pose = _pose_model(tmp_path, _uv())
    with pytest.raises(InputError, match="yolox_l.onnx: DWPose detector"):
        DWPoseExtractor(model_path=pose, det_model_path=str(tmp_path / "yolox_l.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.onnx: not a loadable ONNX model"):
        DWPoseExtractor(model_path=str(bad))


def test_wholebody_mapping_thresholds():
    k = np.arange(266, dtype=np.float32).reshape(133, 2)
    s = np.full(133, 0.9, np.float32)
    s[0] = 0.1
    body, hands = wholebody_to_openpose(k, s)
    assert body[0, 2] == 0 and body[2, 0] == k[6, 0] and body[8, 1] == k[12, 1]
    assert hands[1, 0, 0] == k[112, 0]


def test_official_alignment_rule_on_fixtures(fixture_cases):
    """The official aligned poses are per-frame scalings of target_poses about the driving silhouette's
    bottom-centre by the silhouette-height ratio: check our rule on the official masks/poses (< 2 px)."""
    from PIL import Image

    from pipelines.conditioning.align import silhouette_similarity
    from pipelines.conditioning.render import decode_pose_image

    case = fixture_cases / "case-1"
    if not case.is_dir():
        pytest.skip("fixtures not available")
    errs = []
    for i in (0, 9, 17):
        load = lambda d, c, i=i: np.asarray(Image.open(case / d / f"frame_{i}.png").convert(c))  # noqa: E731
        s, fx, fy = silhouette_similarity(load("source_masks", "L"), load("target_masks", "L"))
        t, a = decode_pose_image(load("target_poses", "RGB")), decode_pose_image(load("target_aligned_poses", "RGB"))
        ok = (t[:, 2] > 0) & (a[:, 2] > 0)
        pred = np.stack([fx + s * (t[ok, 0] - fx), fy + s * (t[ok, 1] - fy)], 1)
        errs.append(np.hypot(*(pred - a[ok, :2]).T).mean())
    assert np.mean(errs) < 2.0, errs
