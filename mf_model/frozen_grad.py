"""Autograd for frozen weights: the input-gradient-only backward passes of guidance, saving less.

Guidance differentiates the estimator with respect to its input latent only; every weight is frozen. PyTorch's
own convolution still saves its input for a weight gradient nobody asks for, and the GEGLU feed-forward keeps its
8×-wide projection and the 4×-wide GELU output alive until the backward. These functions save only what the input
gradient needs (the convolution: nothing but its weight; GEGLU: its C-wide input, the projection being recomputed in
the backward). Forward values are bit-identical to the plain modules; gradients equal up to float summation order.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def input_grad_only(x: torch.Tensor, *params: Optional[torch.Tensor]) -> bool:
    """Is a graph being recorded for ``x`` alone (every given parameter frozen)?"""
    return (torch.is_grad_enabled() and x.requires_grad
            and not any(p is not None and p.requires_grad for p in params))


class InputGradConv2d(torch.autograd.Function):
    """``F.conv2d`` whose backward gives the input's gradient only, from the weight (no saved input)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.conf = (x.shape, stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conf
        return (torch.nn.grad.conv2d_input(shape, weight, grad, stride, padding, dilation, groups),
                None, None, None, None, None, None)


def _gelu_parts(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Φ(u), φ(u)) of the exact (erf) GELU, u·Φ(u)."""
    cdf = 0.5 * (1.0 + torch.erf(u * _INV_SQRT2))
    pdf = torch.exp(-0.5 * u * u) * _INV_SQRT2PI
    return cdf, pdf


class RecomputedGEGLU(torch.autograd.Function):
    """``h · gelu(gate)`` with ``[h, gate] = linear(x, weight, bias)``, saving only ``x`` for the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        h, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
        return h * F.gelu(gate)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        h, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
        cdf, pdf = _gelu_parts(gate)
        d_h = grad * gate * cdf
        d_gate = grad * h * (cdf + gate * pdf)
        return torch.cat([d_h, d_gate], dim=-1) @ weight, None, None


class RecomputedGroupNormSiLU(torch.autograd.Function):
    """``silu(group_norm(x))`` saving only ``x``: the normalised tensor is recomputed in the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):
        ctx.save_for_backward(x, weight, bias)
        ctx.conf = (groups, eps)
        return F.silu(F.group_norm(x, groups, weight, bias, eps))

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        groups, eps = ctx.conf
        n, c = x.shape[:2]
        hw = x[0, 0].numel()
        y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, hw, groups, eps)
        g_y = torch.ops.aten.silu_backward(grad, y)
        d_x = torch.ops.aten.native_group_norm_backward(g_y, x, mean, rstd, weight, n, c, hw, groups,
                                                        [True, False, False])[0]
        return d_x, None, None, None, None


def group_norm_silu(norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``F.silu(norm(x))``; with frozen norm parameters and a graph being recorded, saving only ``x``."""
    if input_grad_only(x, norm.weight, norm.bias):
        return RecomputedGroupNormSiLU.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps)
    return F.silu(norm(x))


class _Recomputed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn):
        ctx.save_for_backward(x)
        ctx.fn = fn
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            y = ctx.fn(xd)
        return torch.autograd.grad(y, xd, grad)[0], None


def recomputed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` saving only ``x``: ``fn`` (frozen parameters, deterministic) runs again in the backward. A small
    activation checkpoint of our own: ``torch.utils.checkpoint`` would load torch's compiler stack (~100 MiB
    resident) on its first call."""
    return _Recomputed.apply(x, fn)
