"""HDR (PQ, HLG) frames tone-mapped to SDR BT.709, so poses and the model see what an SDR display would show.

The frame arrives as 16-bit non-linear BT.2020 RGB (swscale applied the frame's YUV matrix and range). Then:
PQ's EOTF (SMPTE ST 2084) or HLG's inverse OETF with the BT.2100 OOTF for a 1000-nit display gives display light
in nits; 203 nits (BT.2408 reference white) maps to SDR white; luminance is kept up to a knee (75 % of SDR white)
and rolled off above it towards white with a curve whose slope is continuous there (highlights compressed, never
clipped abruptly); BT.2020 primaries convert to BT.709 in linear light; the BT.1886
inverse (gamma 2.4) encodes it. Constants are the standards' own.
"""
from __future__ import annotations

import numpy as np

PQ_M1, PQ_M2 = 2610 / 16384, 2523 / 4096 * 128
PQ_C1, PQ_C2, PQ_C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
HLG_A, HLG_B, HLG_C = 0.17883277, 0.28466892, 0.55991073
REFERENCE_WHITE_NITS = 203.0
PEAK_NITS = 1000.0  # the display HLG's OOTF assumes
KNEE = 0.75
BT2020_TO_BT709 = np.array([[1.6605, -0.5876, -0.0728],
                            [-0.1246, 1.1329, -0.0083],
                            [-0.0182, -0.1006, 1.1187]], np.float32)
LUMA_2020 = np.array([0.2627, 0.6780, 0.0593], np.float32)


def _pq_nits(e: np.ndarray) -> np.ndarray:
    p = np.power(np.clip(e, 0.0, 1.0), 1.0 / PQ_M2)
    return 10000.0 * np.power(np.maximum(p - PQ_C1, 0.0) / (PQ_C2 - PQ_C3 * p), 1.0 / PQ_M1)


def _hlg_nits(e: np.ndarray) -> np.ndarray:
    e = np.clip(e, 0.0, 1.0)
    scene = np.where(e <= 0.5, e * e / 3.0, (np.exp((e - HLG_C) / HLG_A) + HLG_B) / 12.0)
    y = np.tensordot(scene, LUMA_2020, axes=([-1], [0]))[..., None]
    return PEAK_NITS * scene * np.power(np.maximum(y, 1e-6), 0.2)  # OOTF, system gamma 1.2


def hdr_to_sdr(rgb16: np.ndarray, transfer: str) -> np.ndarray:
    """(H, W, 3) uint16 PQ or HLG BT.2020 RGB → (H, W, 3) uint8 SDR BT.709 RGB."""
    e = rgb16.astype(np.float32) / 65535.0
    light = (_pq_nits(e) if transfer == "pq" else _hlg_nits(e)) / REFERENCE_WHITE_NITS
    lum = np.tensordot(light, LUMA_2020, axes=([-1], [0]))[..., None]
    mapped = np.where(lum <= KNEE, lum, KNEE + (1.0 - KNEE) * (1.0 - np.exp(-(lum - KNEE) / (1.0 - KNEE))))
    light = light * np.where(lum > 1e-6, mapped / np.maximum(lum, 1e-6), 0.0)
    light = np.clip(np.tensordot(light, BT2020_TO_BT709.T, axes=([-1], [0])), 0.0, 1.0)
    return np.round(np.power(light, 1.0 / 2.4) * 255.0).astype(np.uint8)
