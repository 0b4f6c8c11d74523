"""The pose-extractor interface shared by the backends."""
from __future__ import annotations

import numpy as np


class PoseExtractor:
    """Extract one person's keypoints (and optionally a person mask) from RGB frames.

    ``extract(frames)`` takes (N, H, W, 3) uint8 RGB and returns ``(body (N,18,3), hands (N,2,21,3), masks)`` with
    keypoints in pixels of the given frames (score 0 = not found) and ``masks`` either ``None`` or (N, H, W) float32
    person probabilities. A frame without a person has all scores 0.
    """

    name = "base"

    def extract(self, frames: np.ndarray):  # pragma: no cover - interface
        raise NotImplementedError

    def reset(self) -> None:
        """Forget temporal tracking state (call between unrelated videos)."""


_CACHE: dict = {}


def get_extractor(backend: str = "mediapipe", **kwargs) -> PoseExtractor:
    """A per-process cached extractor: ``"mediapipe"`` (default) or ``"dwpose"`` (``model_path=`` a local ONNX)."""
    key = (backend, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    ext = _CACHE.get(key)
    if ext is None:
        if backend == "mediapipe":
            from pipelines.poses.mediapipe_backend import MediaPipeExtractor

            ext = MediaPipeExtractor(**kwargs)
        elif backend == "dwpose":
            from pipelines.poses.dwpose_backend import DWPoseExtractor

            ext = DWPoseExtractor(**kwargs)
        else:
            raise ValueError(f"unknown pose backend {backend!r} (mediapipe or dwpose)")
        _CACHE[key] = ext
    return ext
