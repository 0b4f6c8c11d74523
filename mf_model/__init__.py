"""MotionFollower video motion editing: the model (PyTorch only: its CLIP image encoder, VAE decoder and DDIM
quantities are its own, tested against transformers' and diffusers' classes; knows nothing of Ray, files or URIs
beyond weight loading).

Public API::

    from mf_model import load_model, EditWindow, EditOptions
    model = load_model("/models/motionfollower", dtype="fp16", device="cuda")   # or load_model() → tiny preset
    result = model.edit(EditWindow(...), EditOptions(steps=50, guidance_scale=3.5, camera=False))
    result.frames  # (F, H, W, 3) uint8
    # fused long-video mode: each group of overlapping windows (frame_indices = their global spans) in lockstep
    for group in fusion_groups(len(windows)):
        results = model.edit_fused([windows[k] for k in group], EditOptions(fusion="fused"))

Names resolve lazily (as in diffusers): ``from mf_model.window import EditOptions`` or ``MAX_WINDOW_FRAMES`` costs no
torch import, so the pipeline's manifests and planning can use the model's own defaults and limits.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "mf_model.config": ("PRESETS", "ModelConfig", "preset"),
    "mf_model.loading": ("CoverageReport", "WeightsError"),
    "mf_model.model": ("MotionFollower", "load_model", "parse_dtype"),
    "mf_model.noise": ("ArrayNoise", "FrameIndexedNoise", "NoiseProvider", "SequentialNoise"),
    "mf_model.window": ("FAST_OVERLAP", "FAST_STEPS", "FAST_WINDOW_FRAMES", "FUSED_GROUP_WINDOWS", "FUSION_MODES",
                        "MAX_WINDOW_FRAMES", "EditOptions", "EditResult", "EditWindow", "WindowError"),
    "mf_model.fused": ("LatentFuser",),
    "mf_model.fusion_plan": ("fusion_groups", "ramp_weights", "window_spans"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mf_model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from mf_model.config import PRESETS, ModelConfig, preset  # noqa: F401
    from mf_model.fused import LatentFuser  # noqa: F401
    from mf_model.fusion_plan import fusion_groups, ramp_weights, window_spans  # noqa: F401
    from mf_model.loading import CoverageReport, WeightsError  # noqa: F401
    from mf_model.model import MotionFollower, load_model, parse_dtype  # noqa: F401
    from mf_model.noise import ArrayNoise, FrameIndexedNoise, NoiseProvider, SequentialNoise  # noqa: F401
    from mf_model.window import (  # noqa: F401
        FAST_OVERLAP,
        FAST_STEPS,
        FAST_WINDOW_FRAMES,
        FUSED_GROUP_WINDOWS,
        FUSION_MODES,
        MAX_WINDOW_FRAMES,
        EditOptions,
        EditResult,
        EditWindow,
        WindowError,
    )
