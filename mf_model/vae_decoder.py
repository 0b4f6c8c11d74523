"""The decoder half of the SD VAE (diffusers ``AutoencoderKL``'s architecture and keys), latents → pixels.

Our own module rather than diffusers' class: the edit only decodes, and importing diffusers' modelling stack costs
the model process about 45–90 MiB of resident memory for code it never runs. Parameter names are those of the
official ``sd-vae-ft-mse`` files (``post_quant_conv.*``, ``decoder.*``); the configuration is the same
``config.json`` dictionary. ``tests/mf_model/test_vae_clip_schedule.py`` checks it against diffusers' class on the
same weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6  # every norm of the SD VAE decoder


@dataclass(frozen=True)
class VaeDecoderConfig:
    """The fields of an ``AutoencoderKL`` ``config.json`` the decoder uses (defaults as diffusers')."""

    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple = (64,)
    layers_per_block: int = 1
    norm_num_groups: int = 32
    act_fn: str = "silu"
    up_block_types: tuple = ("UpDecoderBlock2D",)
    mid_block_add_attention: bool = True
    use_post_quant_conv: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> VaeDecoderConfig:
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d and d[k] is not None}
        for k in ("block_out_channels", "up_block_types"):
            if k in kw:
                kw[k] = tuple(kw[k])
        cfg = cls(**kw)
        bad = [t for t in cfg.up_block_types if t != "UpDecoderBlock2D"]
        if cfg.act_fn not in ("silu", "swish") or bad or len(cfg.up_block_types) != len(cfg.block_out_channels):
            raise ValueError("VAE config: only act_fn 'silu' (or 'swish') and one 'UpDecoderBlock2D' per "
                             f"block_out_channels entry are supported (got act_fn={cfg.act_fn!r}, "
                             f"up_block_types={cfg.up_block_types})")
        if d.get("norm_type", "group") != "group":
            raise ValueError(f"VAE config: norm_type {d['norm_type']!r} is not supported (only 'group')")
        return cfg


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class SpatialAttention(nn.Module):
    """One-head self-attention over all positions, with its own group norm and the residual."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, c, eps=EPS)
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x.view(b, c, h * w)).transpose(1, 2)
        q, k, v = (proj(t)[:, None] for proj in (self.to_q, self.to_k, self.to_v))
        out = self.to_out[0](F.scaled_dot_product_attention(q, k, v)[:, 0])
        return out.transpose(1, 2).reshape(b, c, h, w) + x


class MidBlock(nn.Module):
    def __init__(self, c: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c, c, groups), ResnetBlock(c, c, groups)])
        self.attentions = nn.ModuleList([SpatialAttention(c, groups)]) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Upsampler(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(layers))
        self.upsamplers = nn.ModuleList([Upsampler(cout)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Decoder(nn.Module):
    def __init__(self, c: VaeDecoderConfig):
        super().__init__()
        chans = list(reversed(c.block_out_channels))
        g = c.norm_num_groups
        self.conv_in = nn.Conv2d(c.latent_channels, chans[0], 3, padding=1)
        self.mid_block = MidBlock(chans[0], g, c.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            UpBlock(chans[max(i - 1, 0)], chans[i], c.layers_per_block + 1, g, upsample=i < len(chans) - 1)
            for i in range(len(chans)))
        self.conv_norm_out = nn.GroupNorm(g, c.block_out_channels[0], eps=EPS)
        self.conv_out = nn.Conv2d(c.block_out_channels[0], c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VaeDecoder(nn.Module):
    """Unscaled latents (B, latent_channels, h, w) → pixels (B, out_channels, 8h, 8w) in about [-1, 1]."""

    def __init__(self, config: dict | VaeDecoderConfig):
        super().__init__()
        c = config if isinstance(config, VaeDecoderConfig) else VaeDecoderConfig.from_dict(config)
        self.config = c
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1) if c.use_post_quant_conv else None
        self.decoder = Decoder(c)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    forward = decode
