"""Cost model of the networks without running them: the guidance graph's saved-activation bytes, measured by a
forward on the meta device (no memory, no compute), for the automatic activation-checkpointing decision."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from mf_model.config import UNetConfig

_META: dict = {}
_GRAPH: dict = {}


def meta_unet(config: UNetConfig, dtype: torch.dtype = torch.float32):
    """A weightless UNet of ``config`` (cached)."""
    key = (repr(config), dtype)
    if key not in _META:
        from mf_model.unet import UNet3DConditionModel
        with torch.device("meta"):
            unet = UNet3DConditionModel(config)
        _META[key] = unet.to(dtype).requires_grad_(False).eval()
    return _META[key]


def meta_inputs(config: UNetConfig, latent_shape, dtype: torch.dtype = torch.float32, batch: int = 1):
    """Meta tensors for one UNet call on ``latent_shape`` (1, C, F, h, w) with ``batch`` videos."""
    _, c, f, h, w = latent_shape
    boc = config.block_out_channels
    kw = dict(device="meta", dtype=dtype)
    x = torch.empty(batch, c, f, h, w, **kw)
    clip = torch.empty(batch * f, 1, config.cross_attention_dim, **kw)
    pose = torch.empty(f, boc[0], h, w, **kw)
    app, hh, ww = [], h, w
    for ch in boc:
        app.append(torch.empty(f, ch, hh, ww, **kw))
        hh, ww = (hh + 1) // 2, (ww + 1) // 2
    return x, clip, pose, app


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel (flash, cuDNN, memory-efficient) saves for backward: q, k, v, the output and
    one fp32 log-sum-exp per query. On the meta device the math path would run and save the full attention matrix,
    which no CUDA run of the model holds."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out


class _AsOnCuda(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            return _FusedAttention.apply(*args[:3])
        return func(*args, **(kwargs or {}))


def _graph_bytes(config: UNetConfig, latent_shape: tuple, elsize: int) -> int:
    dtype = {2: torch.float16, 4: torch.float32}.get(elsize, torch.float32)
    unet = meta_unet(config, dtype)
    x, clip, pose, app = meta_inputs(config, latent_shape, dtype)
    seen: dict = {}  # storage → (tensor kept alive, bytes): views of one storage count once, as in memory

    weights = {p.untyped_storage()._cdata for p in unet.parameters()}  # saved, but held anyway

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in weights:
            seen[storage._cdata] = (t, storage.nbytes())
        return t

    was = unet.gradient_checkpointing
    unet.gradient_checkpointing = False
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _AsOnCuda():
            x.requires_grad_(True)
            unet(x, 999, clip, pose, app, up_ft_indices=[1, 2])
    finally:
        unet.gradient_checkpointing = was
    return int(sum(b for _, b in seen.values()))


def guidance_graph_bytes(config: UNetConfig, latent_shape, elsize: int) -> int:
    """Bytes autograd saves for the guidance's estimator forward (no checkpointing) on ``latent_shape``."""
    key = (repr(config), tuple(int(v) for v in latent_shape), int(elsize))
    if key not in _GRAPH:
        _GRAPH[key] = _graph_bytes(config, key[1], key[2])
    return _GRAPH[key]
