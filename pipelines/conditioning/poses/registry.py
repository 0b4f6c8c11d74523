"""Pose backends by name, one cached extractor per process and settings.

:data:`BACKENDS` and :data:`DEFAULT_BACKEND` are the one list of backend names and the one default: CLI choices,
run options and the conditioning functions' defaults all take them from here.
"""
from __future__ import annotations

from pipelines.conditioning.poses.base import PoseExtractor

BACKENDS = ("mediapipe", "dwpose")  # the names get_extractor knows
DEFAULT_BACKEND = "mediapipe"  # CPU, no model file to provide

_CACHE: dict = {}


def get_extractor(backend: str = DEFAULT_BACKEND, **kwargs) -> PoseExtractor:
    """A per-process cached extractor: ``"mediapipe"`` (default) or ``"dwpose"`` (``model_path=`` a local ONNX);
    ``ValueError`` for a name not in :data:`BACKENDS`."""
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
            raise ValueError(f"unknown pose backend {backend!r} ({' or '.join(BACKENDS)})")
        _CACHE[key] = ext
    return ext
