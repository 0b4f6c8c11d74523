"""The sd15 preset's state-dict keys and shapes equal the official full-size key list."""
import csv

import torch

from mf_model.config import preset
from mf_model.controllers import PoseGuider
from mf_model.unet import UNet3DConditionModel


def _tsv(golden_case, module):
    path = golden_case.parent / "fullsize_keys.tsv"
    with open(path) as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["module"] == module]
    return {r["key"]: tuple(int(x) for x in r["shape"].split("x")) for r in rows}


def _ours(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_sd15_keys_and_shapes_match_official(golden_case):
    cfg = preset("sd15")
    with torch.device("meta"):
        unet = UNet3DConditionModel(cfg.unet)
        pg = PoseGuider(**vars(cfg.pose_guider))
    ours = _ours(unet)
    for module in ("denoising_unet", "estimator"):
        expected = _tsv(golden_case, module)
        assert len(expected) == 1312
        missing, extra = sorted(set(expected) - set(ours))[:5], sorted(set(ours) - set(expected))[:5]
        assert set(ours) == set(expected), (missing, extra)
        bad = [k for k in expected if ours[k] != expected[k]]
        assert not bad, [(k, ours[k], expected[k]) for k in bad[:5]]
    assert _ours(pg) == _tsv(golden_case, "pose_guider")
    n_params = sum(p.numel() for p in unet.parameters())
    assert n_params == 1_390_099_524  # the official inflated UNet's parameter count
