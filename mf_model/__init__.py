"""MotionFollower video motion editing: the model (PyTorch + diffusers; knows nothing of Ray, files or URIs beyond
weight loading).

Public API::

    from mf_model import load_model, EditWindow, EditOptions
    model = load_model("/models/motionfollower", dtype="fp16", device="cuda")   # or load_model() → tiny preset
    result = model.edit(EditWindow(...), EditOptions(steps=50, cfg=3.5, camera=False))
    result.frames  # (F, H, W, 3) uint8
"""
from mf_model.config import PRESETS, ModelConfig, preset
from mf_model.loading import CoverageReport, WeightsError
from mf_model.model import MotionFollower, load_model, parse_dtype
from mf_model.noise import ArrayNoise, FrameIndexedNoise, NoiseProvider, SequentialNoise
from mf_model.window import MAX_WINDOW_FRAMES, EditOptions, EditResult, EditWindow, WindowError

__all__ = [
    "ArrayNoise", "CoverageReport", "EditOptions", "EditResult", "EditWindow", "FrameIndexedNoise",
    "MAX_WINDOW_FRAMES", "ModelConfig", "MotionFollower", "NoiseProvider", "PRESETS", "SequentialNoise",
    "WeightsError", "WindowError", "load_model", "parse_dtype", "preset",
]
