"""Camera mode: the reconstruction's up-block self-attention K/V, injected into the editing pass.

In camera mode the editing branch's 9 up-block spatial self-attentions attend to
``[own K/V ⊙ target mask ; reconstruction K/V ⊙ (1 − source mask)]`` of the same denoising step (masked tokens are
zeroed, not removed, exactly as the official processor does). Branches run in lockstep, so only one step's K/V is
ever held, on the model's device (the official release keeps all 30 steps on the host: ~20 GB at 24 frames).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class KVBank:
    """One step's reconstruction K/V, keyed by attention name; masks are (F, 1, H, W) at pixel resolution."""

    source_masks: torch.Tensor
    target_masks: torch.Tensor
    store: dict = field(default_factory=dict)
    _mask_cache: dict = field(default_factory=dict)

    def masks_at(self, h: int, w: int, dtype: torch.dtype):
        key = (h, w, dtype)
        if key not in self._mask_cache:
            src = F.interpolate(self.source_masks.float(), size=(h, w), mode="nearest")
            tgt = F.interpolate(self.target_masks.float(), size=(h, w), mode="nearest")
            nf = src.shape[0]
            self._mask_cache[key] = (src.reshape(nf, h * w, 1).to(dtype), tgt.reshape(nf, h * w, 1).to(dtype))
        return self._mask_cache[key]


class CameraHook:
    """Shared by the up-block self-attentions of one UNet; ``mode`` is set per forward call."""

    def __init__(self):
        self.mode: Optional[str] = None  # None | "save" | "inject"
        self.bank: Optional[KVBank] = None

    def apply(self, name: str, k: torch.Tensor, v: torch.Tensor, spatial):
        if self.mode is None or self.bank is None:
            return k, v
        if self.mode == "save":
            self.bank.store[name] = (k.detach(), v.detach())
            return k, v
        if name not in self.bank.store:
            raise RuntimeError(f"camera mode: no reconstruction K/V saved for {name} at this step")
        k_r, v_r = self.bank.store[name]
        h, w = spatial
        m_src, m_tgt = self.bank.masks_at(h, w, k.dtype)
        reps = k.shape[0] // k_r.shape[0]
        keep_bg = 1 - m_src
        k_r = (k_r.to(k.dtype) * keep_bg).repeat(reps, 1, 1)
        v_r = (v_r.to(v.dtype) * keep_bg).repeat(reps, 1, 1)
        m_t = m_tgt.repeat(reps, 1, 1)
        return torch.cat([k * m_t, k_r], dim=1), torch.cat([v * m_t, v_r], dim=1)


class camera_mode:
    """Context manager: ``with camera_mode(unet.camera_hook, "save", bank): unet(...)``."""

    def __init__(self, hook: CameraHook, mode: Optional[str], bank: Optional[KVBank]):
        self.hook, self.mode, self.bank = hook, mode, bank

    def __enter__(self):
        self.hook.mode, self.hook.bank = self.mode, self.bank
        return self.hook

    def __exit__(self, *exc):
        self.hook.mode, self.hook.bank = None, None
        return False
