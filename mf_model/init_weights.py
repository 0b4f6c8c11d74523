"""Seeded random initialisation of the random-weight models (``MotionFollower.random``): tests, demos, benchmarks."""
from __future__ import annotations

import torch

from mf_model.transformer import PositionalEncoding


def randomize_zero_inits(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Zero-initialised output layers (motion-module ``proj_out``, PoCtr ``conv_out``) get small random values so
    random-weight models exercise every path."""
    for name, p in module.named_parameters():
        if (name.endswith("proj_out.weight") and "temporal_transformer" in name) or name == "conv_out.weight":
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / max(1, p[0].numel()) ** 0.5))


def fill_random(unet: torch.nn.Module, gen: torch.Generator) -> None:
    """In place: matrices and kernels ~ N(0, 1/fan_in), norm weights 1, other vectors 0, positional encodings
    recomputed (a full-size UNet built on the meta device and allocated with ``to_empty``)."""
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.normal_(0.0, 1.0 / fan_in ** 0.5, generator=gen)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for m in unet.modules():
            if isinstance(m, PositionalEncoding):
                m.pe.copy_(PositionalEncoding(m.pe.shape[-1], m.pe.shape[1]).pe.to(m.pe.device, m.pe.dtype))
