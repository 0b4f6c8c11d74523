"""Spatial transformer (``Transformer3DModel``) and the temporal motion module (``VanillaTemporalModule``)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from mf_model.config import MotionModuleConfig
from mf_model.frozen_grad import input_grad_only, recomputed
from mf_model.layers import Attention, FeedForward, FrozenConv2d


class TemporalBasicTransformerBlock(nn.Module):
    """Spatial self-attention, cross-attention to the per-frame CLIP token, feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim=cross_attention_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x, context, spatial):
        x = self.attn1(self.norm1(x), spatial=spatial) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class Transformer3DModel(nn.Module):
    def __init__(self, channels: int, heads: int, cross_attention_dim: int, norm_num_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6, affine=True)
        self.proj_in = FrozenConv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [TemporalBasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim)]
        )
        self.proj_out = FrozenConv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: (B*F, C, H, W); context: (B*F, T, D), row b*F+f conditions frame f of video b."""
        bf, c, h, w = x.shape
        if context.shape[0] != bf:
            raise ValueError(f"conditioning has {context.shape[0]} rows for {bf} frames")
        residual = x
        x = self.proj_in(self.norm(x))
        # contiguous rows: a strided view makes frozen-weight matmuls run as many tiny products
        x = x.permute(0, 2, 3, 1).contiguous().view(bf, h * w, c)
        for block in self.transformer_blocks:
            x = block(x, context, (h, w))
        x = x.reshape(bf, h, w, c).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(x) + residual


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        # computed on the CPU even inside a meta-device build: arithmetic on meta tensors imports torch's
        # compiler stack (torch._dynamo, sympy: about 80 MiB resident) for nothing
        cpu = torch.device("cpu")
        position = torch.arange(max_len, device=cpu).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, dim, 2, device=cpu) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim, device=cpu)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.to(torch.empty(()).device), persistent=True)  # the build's device

    def forward(self, x):
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class VersatileAttention(Attention):
    """Self-attention across the frames of each pixel, with a sinusoidal frame-position encoding."""

    def __init__(self, dim: int, heads: int, pe_len: Optional[int]):
        super().__init__(dim, heads, dim // heads)
        self.pos_encoder = PositionalEncoding(dim, pe_len) if pe_len else None

    def forward_frames(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bf, n, c = x.shape
        b = bf // frames
        x = x.reshape(b, frames, n, c).permute(0, 2, 1, 3).contiguous().view(b * n, frames, c)
        if self.pos_encoder is not None:
            if frames > self.pos_encoder.pe.shape[1]:
                raise ValueError(
                    f"{frames} frames exceed the temporal position encoding length {self.pos_encoder.pe.shape[1]}")
            x = self.pos_encoder(x)
        x = super().forward(x)
        return x.reshape(b, n, frames, c).permute(0, 2, 1, 3).reshape(bf, n, c)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, cfg: MotionModuleConfig):
        super().__init__()
        pe_len = cfg.temporal_position_encoding_max_len if cfg.temporal_position_encoding else None
        for kind in cfg.attention_block_types:
            if kind != "Temporal_Self":
                raise ValueError(f"unsupported motion-module attention block {kind!r}")
        self.attention_blocks = nn.ModuleList(
            [VersatileAttention(dim, cfg.num_attention_heads, pe_len) for _ in cfg.attention_block_types])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in cfg.attention_block_types])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x, frames):
        for attn, norm in zip(self.attention_blocks, self.norms):
            if input_grad_only(x, *attn.parameters(), *norm.parameters()):
                # recorded for an input gradient: keep only x; its norm, q, k, v and attention output (5× x's
                # size) are recomputed in the backward (the temporal attention over F frames is cheap)
                x = recomputed(lambda y, a=attn, n=norm: self._attend(a, n, y, frames), x) + x
            else:
                x = self._attend(attn, norm, x, frames) + x
        return self.ff(self.ff_norm(x)) + x

    @staticmethod
    def _attend(attn: VersatileAttention, norm: nn.LayerNorm, x: torch.Tensor, frames: int) -> torch.Tensor:
        return attn.forward_frames(norm(x), frames)


class TemporalTransformer3DModel(nn.Module):
    def __init__(self, dim: int, cfg: MotionModuleConfig):
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_num_groups, dim, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(dim, cfg) for _ in range(cfg.num_transformer_block)])
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        residual = x
        x = self.norm(x).permute(0, 2, 3, 1).contiguous().view(bf, h * w, c)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, frames)
        x = self.proj_out(x)
        return x.reshape(bf, h, w, c).permute(0, 3, 1, 2).contiguous() + residual


class VanillaTemporalModule(nn.Module):
    def __init__(self, dim: int, cfg: MotionModuleConfig):
        super().__init__()
        self.temporal_transformer = TemporalTransformer3DModel(dim, cfg)
        nn.init.zeros_(self.temporal_transformer.proj_out.weight)
        nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x, frames):
        return self.temporal_transformer(x, frames)
