"""Inflated building blocks of the 3-D UNet.

Layout convention inside the networks: video tensors travel as ``(B*F, C, H, W)`` ("frames flattened", row
``b*F + f``); per-frame convolutions and group norms are then plain 2-D operations. Module and parameter names
mirror the official state dicts.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mf_model.frozen_grad import InputGradConv2d, RecomputedGEGLU, group_norm_silu, input_grad_only


class FrozenConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same keys) that, with frozen weights, saves no input for backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (input_grad_only(x, self.weight, self.bias) and self.padding_mode == "zeros"
                and not isinstance(self.padding, str)):
            return InputGradConv2d.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                        self.groups)
        return super().forward(x)


class InflatedConv3d(FrozenConv2d):
    """A 2-D convolution applied to every frame (keys identical to ``Conv2d``)."""


class InflatedGroupNorm(nn.GroupNorm):
    """A group norm applied per frame (statistics never mix frames)."""


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0):
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class ResnetBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = InflatedGroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = InflatedConv3d(in_channels, out_channels, 3, stride=1, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = InflatedGroupNorm(groups, out_channels, eps=eps, affine=True)
        self.conv2 = InflatedConv3d(out_channels, out_channels, 3, stride=1, padding=1)
        self.conv_shortcut = (
            InflatedConv3d(in_channels, out_channels, 1, stride=1, padding=0) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor, frames: int) -> torch.Tensor:
        h = self.conv1(group_norm_silu(self.norm1, x))
        t = self.time_emb_proj(F.silu(temb))  # (B, C)
        h = h + t.repeat_interleave(frames, dim=0)[:, :, None, None]
        h = self.conv2(group_norm_silu(self.norm2, h))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample3D(nn.Module):
    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.conv = InflatedConv3d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        return self.conv(x)


class Upsample3D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = InflatedConv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Optional[tuple[int, int]] = None):
        dtype = x.dtype
        if dtype == torch.bfloat16:
            x = x.float()
        x = F.interpolate(x, size=size, mode="nearest") if size is not None else F.interpolate(
            x, scale_factor=2.0, mode="nearest")
        return self.conv(x.to(dtype))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        if input_grad_only(x, self.proj.weight, self.proj.bias):
            return RecomputedGEGLU.apply(x, self.proj.weight, self.proj.bias)
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


# Parameters of a one-token cross-attention that no forward uses (see Attention.forward): dropped after loading.
UNRUN_SUFFIXES = ("attn2.to_q.weight", "attn2.to_k.weight")


def drop_unrun_projections(module: nn.Module) -> int:
    """Remove ``to_q`` and ``to_k`` of every cross-attention in ``module`` (its context is the one CLIP image token,
    so only ``to_v`` and ``to_out`` ever run). Returns the number of parameters dropped."""
    dropped = 0
    for m in module.modules():
        if isinstance(m, Attention) and m.is_cross and m.to_q is not None:
            dropped += sum(p.numel() for p in (*m.to_q.parameters(), *m.to_k.parameters()))
            m.to_q = None
            m.to_k = None
    return dropped


class Attention(nn.Module):
    """Multi-head attention with the official parameter names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``).

    ``kv_hook`` (set only on the up-block spatial self-attentions of the denoising UNet) lets camera mode save the
    reconstruction's K/V and inject them into the editing pass (see :mod:`mf_model.camera`).
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: Optional[int] = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(cross_attention_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(cross_attention_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])
        self.kv_hook = None  # (CameraHook, name) where camera K/V may apply
        self.is_cross = cross_attention_dim is not None

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                spatial: Optional[tuple[int, int]] = None) -> torch.Tensor:
        if context is not None and context.shape[1] == 1:
            # One key (the CLIP image token): its softmax weight is exactly 1, so every query receives the same
            # value. Neither to_q, to_k nor the scores are needed, and to_out runs once per batch item, not per
            # position (see drop_unrun_projections).
            out = self.to_out[1](self.to_out[0](self.to_v(context)))
            return out.expand(-1, x.shape[1], -1)
        if self.to_q is None:
            raise ValueError("this cross-attention keeps only to_v and to_out (its context is one-token); "
                             "to_q and to_k were dropped")
        q = self.to_q(x)
        ctx = x if context is None else context
        k = self.to_k(ctx)
        v = self.to_v(ctx)
        if self.kv_hook is not None and context is None:
            hook, name = self.kv_hook
            k, v = hook.apply(name, k, v, spatial)
        b, n, inner = q.shape
        d = inner // self.heads
        q = q.view(b, n, self.heads, d).transpose(1, 2)
        k = k.view(b, k.shape[1], self.heads, d).transpose(1, 2)
        v = v.view(b, v.shape[1], self.heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, inner)
        return self.to_out[1](self.to_out[0](out))
