"""Fitting frames into the model's square (or any) frame: letterbox (``pad``) or centre-crop (``crop``), and the
affine map between source and fitted pixels."""
from __future__ import annotations

import numpy as np

FIT_MODES = ("pad", "crop")  # keep the aspect by padding (letterbox) or by a centre crop
DEFAULT_FIT_MODE = FIT_MODES[0]


def fit_frame(frame: np.ndarray, size: tuple[int, int] | int = (512, 512), mode: str = DEFAULT_FIT_MODE) -> np.ndarray:
    """Resize one frame (H, W[, C]) to ``size`` = (H, W) keeping the aspect ratio.

    ``mode="pad"`` letterboxes with black, ``mode="crop"`` centre-crops. Masks (2-D) use nearest neighbour.
    """
    import cv2

    th, tw = (size, size) if isinstance(size, int) else size
    geo = fit_geometry(frame.shape[:2], (th, tw), mode)
    s, ox, oy = geo["scale"], geo["ox"], geo["oy"]
    h, w = frame.shape[:2]
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    interp = cv2.INTER_NEAREST if frame.ndim == 2 else (cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    if (nh, nw) == (h, w):
        resized = frame
    else:
        resized = cv2.resize(frame, (nw, nh), interpolation=interp)
    out = np.zeros((th, tw) + frame.shape[2:], dtype=frame.dtype)
    # place the resized image at (ox, oy) (negative offsets crop)
    x0, y0 = max(0, ox), max(0, oy)
    sx0, sy0 = max(0, -ox), max(0, -oy)
    cw, ch = min(tw - x0, nw - sx0), min(th - y0, nh - sy0)
    out[y0:y0 + ch, x0:x0 + cw] = resized[sy0:sy0 + ch, sx0:sx0 + cw]
    return out


def fit_geometry(src_hw: tuple[int, int], size: tuple[int, int] | int = (512, 512),
                 mode: str = DEFAULT_FIT_MODE) -> dict:
    """The affine map of :func:`fit_frame`: ``x_out = x_in * scale + ox`` (same for y with ``oy``)."""
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = src_hw
    if mode not in FIT_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(FIT_MODES)}, not {mode!r}")
    s = min(th / h, tw / w) if mode == "pad" else max(th / h, tw / w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    return {"scale": s, "ox": (tw - nw) // 2, "oy": (th - nh) // 2}


def fit_frames(frames: np.ndarray, size=(512, 512), mode: str = DEFAULT_FIT_MODE) -> np.ndarray:
    """:func:`fit_frame` over a batch."""
    th, tw = (size, size) if isinstance(size, int) else size
    if frames.shape[1:3] == (th, tw):
        return frames
    return np.stack([fit_frame(f, (th, tw), mode) for f in frames]) if len(frames) else \
        np.zeros((0, th, tw) + frames.shape[3:], frames.dtype)
