"""The pose-extractor interface shared by the backends."""
from __future__ import annotations

import numpy as np


def to_pixels(x, y, width: int, height: int):
    """Normalised image coordinates (0 and 1 at the image's outer edges, as MediaPipe gives them) → pixel
    coordinates with pixel centres at integers (the convention of OpenPose/DWPose keypoints, of ``cv2`` drawing and
    of ``cv2.warpAffine``): pixel ``i`` spans normalised ``[i, i + 1) / size``, so its centre ``(i + 0.5) / size``
    maps to ``i``."""
    return np.asarray(x, np.float32) * width - 0.5, np.asarray(y, np.float32) * height - 0.5


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
