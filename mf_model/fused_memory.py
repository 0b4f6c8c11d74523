"""Memory of a fused request (``mf_model.fused``): the formula, and an exact count of what a window's state holds.

Per window frame at model size H×W (latent h = H/8, w = W/8), element size e of the model dtype, on the device:

    cond(H, W)  = e·(D + 2·P·h·w + A·Σ_l C_l·h_l·w_l + 2·H·W)     CLIP (D), PoCtr source+target (P channels),
                                                                    ReCtr per down level (A = 1 shared estimator,
                                                                    2 official), source+target pixel masks
    guide(H, W) = 4·(5·2h·2w + h·w + 5·Σ_g h_g·w_g)                 guidance regions (fp32, 2× latent grid), the
                                                                    latent target mask, region counts per guidance
                                                                    feature level g (up blocks 1 and 2)
    lat(H, W)   = 2·4·h·w·e                                         edit + reconstruction latents
    b(H, W)     = cond + guide + lat

and on the host, per window frame (the group's inputs and results): ``11·H·W`` uint8 inputs (source frames, two
pose renderings, two masks) + ``3·H·W`` edited frames (+ ``3·H·W`` reconstruction) + ``2·4·h·w·4`` fp32 latents
in ``EditResult.info``.

A request of N frames in windows of ``window`` frames overlapping by ``overlap`` has ``n = 1 + ceil((N - window) /
(window - overlap))`` windows, fused in groups of at most G; the largest group has ``G_eff = ceil(n / ceil(n / G))``
windows. Over the plain (one window at a time) mode the fused mode adds, on the device::

    device_extra = (G_eff - 1)·window·b(H, W)

and holds ``G_eff·window·host_frame`` of inputs and results on the host (the plain mode: one window's). Both are
bounded by G, not by N. (The transient working set of a window's step — UNet activations, the guidance graph,
camera K/V — is the plain mode's: one window is stepped at a time.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mf_model.config import ModelConfig
from mf_model.fusion_plan import fusion_groups, num_windows
from mf_model.window import FUSED_GROUP_WINDOWS

INPUT_BYTES_PER_PIXEL = 11  # source RGB, source + target pose RGB, source + target masks (uint8)


def _levels(h: int, w: int, n: int, halve) -> list[tuple[int, int]]:
    out = [(h, w)]
    for _ in range(n - 1):
        h, w = halve(h), halve(w)
        out.append((h, w))
    return out


def state_bytes_per_frame(config: ModelConfig, size: tuple[int, int], elsize: int, shared_estimator: bool = True,
                          ) -> dict[str, int]:
    """Device bytes one window frame's fused state holds: ``{"cond", "guide", "lat", "total"}``."""
    big_h, big_w = size
    h, w = big_h // 8, big_w // 8
    u = config.unet
    n = len(u.block_out_channels)
    app_px = sum(c * hh * ww for c, (hh, ww) in zip(u.block_out_channels, _levels(h, w, n, lambda v: v // 2)))
    down = _levels(h, w, n, lambda v: (v + 1) // 2)  # the UNet's own downsampling (padded convs)
    guide_px = sum(hh * ww for hh, ww in (down[n - 3], down[n - 4]))  # up_blocks.1 / .2 outputs
    pose_c = config.pose_guider.conditioning_embedding_channels
    cond = elsize * (u.cross_attention_dim + 2 * pose_c * h * w + (1 if shared_estimator else 2) * app_px
                     + 2 * big_h * big_w)
    guide = 4 * (5 * (2 * h) * (2 * w) + h * w + 5 * guide_px)
    lat = 2 * u.in_channels * h * w * elsize
    return {"cond": cond, "guide": guide, "lat": lat, "total": cond + guide + lat}


def host_bytes_per_frame(size: tuple[int, int], reconstruction: bool = False) -> int:
    big_h, big_w = size
    px = big_h * big_w
    return (INPUT_BYTES_PER_PIXEL + 3 + (3 if reconstruction else 0)) * px + 2 * 4 * (px // 64) * 4


@dataclass
class FusedMemory:
    frames: int
    windows: int
    groups: int
    group_windows: int  # G_eff: windows of the largest group
    device_per_frame: int  # b(H, W)
    host_per_frame: int
    device_state: int  # G_eff · window · b: every window's state of the largest group
    device_extra: int  # over the plain mode: (G_eff - 1) · window · b
    host_io: int  # G_eff · window · host_per_frame


def fused_memory(config: ModelConfig, frames: int, size: tuple[int, int], window: int, overlap: int,
                 group_windows: int = FUSED_GROUP_WINDOWS, elsize: int = 2, shared_estimator: bool = True,
                 reconstruction: bool = False) -> FusedMemory:
    """The formula of the module docstring for one request."""
    n = num_windows(frames, window, overlap)
    groups = fusion_groups(n, group_windows)
    g_eff = max(len(g) for g in groups)
    win = min(window, frames)
    b = state_bytes_per_frame(config, size, elsize, shared_estimator)["total"]
    host = host_bytes_per_frame(size, reconstruction)
    return FusedMemory(frames=frames, windows=n, groups=len(groups), group_windows=g_eff, device_per_frame=b,
                       host_per_frame=host, device_state=g_eff * win * b, device_extra=(g_eff - 1) * win * b,
                       host_io=g_eff * win * host)


def state_bytes(state) -> int:
    """Exact bytes of the tensors one ``SamplerState`` holds (each storage once), guidance-mask caches included."""
    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        elif isinstance(t, (list, tuple)):
            for v in t:
                add(v)
        elif isinstance(t, dict):
            for v in t.values():
                add(v)

    c = state.c
    add([c.clip, c.pose_src, c.pose_tgt, list(c.app_unet), list(c.app_est), c.source_masks, c.target_masks])
    m = state.masks
    add([m.regions, m.target_latent, m._counts])
    add([state.x, state.x_rec])
    return int(sum(seen.values()))


def request_figures(config: ModelConfig, seconds: float, fps: float, size: tuple[int, int], window: int,
                    overlap: int, group_windows: int = FUSED_GROUP_WINDOWS, elsize: int = 2) -> FusedMemory:
    """:func:`fused_memory` of a request ``seconds`` long at ``fps`` (formula, not measured)."""
    return fused_memory(config, int(math.ceil(seconds * fps)), size, window, overlap, group_windows, elsize)
