"""Pose backends by name, one cached extractor per process and settings."""
from __future__ import annotations

from pipelines.conditioning.poses.base import PoseExtractor

_CACHE: dict = {}


def get_extractor(backend: str = "mediapipe", **kwargs) -> PoseExtractor:
    """A per-process cached extractor: ``"mediapipe"`` (default) or ``"dwpose"`` (``model_path=`` a local ONNX)."""
    key = (backend, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    ext = _CACHE.get(key)
    if ext is None:
        if backend == "mediapipe":
            from pipelines.conditioning.poses.mediapipe_backend import MediaPipeExtractor

            ext = MediaPipeExtractor(**kwargs)
        elif backend == "dwpose":
            from pipelines.conditioning.poses.dwpose_backend import DWPoseExtractor

            ext = DWPoseExtractor(**kwargs)
        else:
            raise ValueError(f"unknown pose backend {backend!r} (mediapipe or dwpose)")
        _CACHE[key] = ext
    return ext
