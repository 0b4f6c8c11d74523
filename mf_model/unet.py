"""``UNet3DConditionModel``: the SD image-variations UNet inflated to video, with motion modules, PoCtr input and
ReCtr injection. The same class serves as the score estimator (``forward_features``)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mf_model.camera import CameraHook
from mf_model.config import UNetConfig
from mf_model.controllers import AppearanceAdapter
from mf_model.layers import (
    Downsample3D,
    InflatedConv3d,
    InflatedGroupNorm,
    ResnetBlock3D,
    TimestepEmbedding,
    Upsample3D,
    timestep_embedding,
)
from mf_model.transformer import Transformer3DModel, VanillaTemporalModule

log = logging.getLogger(__name__)
_warned_broadcast = set()


def add_appearance(x: torch.Tensor, feat: torch.Tensor, batch: int) -> torch.Tensor:
    """Add a level's appearance feature (F, C, h, w) to hidden states (B*F, C, H, W), broadcast over B.

    Where a latent side is not a multiple of 8, pooling (rounds down) and strided convs (round up) disagree; the
    official code then adds the smaller feature by broadcasting, which only works for a side of 1.
    """
    bf, c, h, w = x.shape
    fh, fw = feat.shape[-2:]
    if (fh, fw) != (h, w):
        if all(a == b or a == 1 for a, b in ((fh, h), (fw, w))):
            key = (fh, fw, h, w)
            if key not in _warned_broadcast:
                _warned_broadcast.add(key)
                log.warning("appearance feature %dx%d broadcast onto hidden state %dx%d (latent size not a multiple"
                            " of 8), as the official code does", fw, fh, w, h)
        else:
            raise ValueError(
                f"appearance feature {fw}x{fh} cannot be added to hidden state {w}x{h}: use a frame size whose "
                "latent sides (size/8) are multiples of 8, or small enough that the deepest level is 1 pixel")
    x = x.view(batch, bf // batch, c, h, w) + feat.unsqueeze(0)
    return x.view(bf, c, h, w)


def _layer_modules(cfg: UNetConfig, channels: int, n: int, with_attention: bool):
    """The spatial transformers (or None) and motion modules of a block's ``n`` layers."""
    attentions = nn.ModuleList([Transformer3DModel(channels, cfg.attention_head_dim, cfg.cross_attention_dim,
                                                   cfg.norm_num_groups) for _ in range(n)]) if with_attention else None
    motion = nn.ModuleList([VanillaTemporalModule(channels, cfg.motion_module) for _ in range(n)])
    return attentions, motion


class CrossAttnDownBlock3D(nn.Module):
    def __init__(self, c_in, c_out, temb, cfg: UNetConfig, add_downsample: bool, with_attention: bool):
        super().__init__()
        n = cfg.layers_per_block
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList([ResnetBlock3D(c_in if i == 0 else c_out, c_out, temb, g, eps) for i in range(n)])
        self.attentions, self.motion_modules = _layer_modules(cfg, c_out, n, with_attention)
        self.downsamplers = nn.ModuleList([Downsample3D(c_out, cfg.downsample_padding)]) if add_downsample else None

    def forward(self, x, temb, context, frames, appearance):
        outputs = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb, frames)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            if i == 1 and appearance is not None:
                x = add_appearance(x, appearance, x.shape[0] // frames)
            x = self.motion_modules[i](x, frames)
            outputs.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            outputs.append(x)
        return x, outputs


class DownBlock3D(CrossAttnDownBlock3D):
    def __init__(self, c_in, c_out, temb, cfg, add_downsample):
        super().__init__(c_in, c_out, temb, cfg, add_downsample, with_attention=False)


class UNetMidBlock3DCrossAttn(nn.Module):
    def __init__(self, c, temb, cfg: UNetConfig):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList([ResnetBlock3D(c, c, temb, g, eps), ResnetBlock3D(c, c, temb, g, eps)])
        self.attentions = nn.ModuleList([Transformer3DModel(c, cfg.attention_head_dim, cfg.cross_attention_dim, g)])
        self.motion_modules = nn.ModuleList([VanillaTemporalModule(c, cfg.motion_module)])

    def forward(self, x, temb, context, frames):
        x = self.resnets[0](x, temb, frames)
        x = self.attentions[0](x, context)
        x = self.motion_modules[0](x, frames)
        return self.resnets[1](x, temb, frames)


class CrossAttnUpBlock3D(nn.Module):
    def __init__(self, c_in, c_out, c_prev, temb, cfg: UNetConfig, add_upsample: bool, with_attention: bool):
        super().__init__()
        n = cfg.layers_per_block + 1
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        resnets = []
        for i in range(n):
            skip = c_in if i == n - 1 else c_out
            res_in = c_prev if i == 0 else c_out
            resnets.append(ResnetBlock3D(res_in + skip, c_out, temb, g, eps))
        self.resnets = nn.ModuleList(resnets)
        self.attentions, self.motion_modules = _layer_modules(cfg, c_out, n, with_attention)
        self.upsamplers = nn.ModuleList([Upsample3D(c_out)]) if add_upsample else None

    def forward(self, x, skips, temb, context, frames, upsample_size=None):
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips[-(i + 1)]], dim=1)
            x = resnet(x, temb, frames)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            x = self.motion_modules[i](x, frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UpBlock3D(CrossAttnUpBlock3D):
    def __init__(self, c_in, c_out, c_prev, temb, cfg, add_upsample):
        super().__init__(c_in, c_out, c_prev, temb, cfg, add_upsample, with_attention=False)


def to_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) → (B*F, C, H, W)."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def to_video(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*F, C, H, W) → (B, C, F, H, W)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)


class UNet3DConditionModel(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        boc = config.block_out_channels
        temb = boc[0] * 4
        self.conv_in = InflatedConv3d(config.in_channels, boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(boc[0], temb)
        self.down_blocks = nn.ModuleList()
        for i, c_out in enumerate(boc):
            c_in = boc[i - 1] if i > 0 else boc[0]
            last = i == len(boc) - 1
            if last:
                self.down_blocks.append(DownBlock3D(c_in, c_out, temb, config, add_downsample=False))
            else:
                self.down_blocks.append(CrossAttnDownBlock3D(c_in, c_out, temb, config, True, with_attention=True))
        self.mid_block = UNetMidBlock3DCrossAttn(boc[-1], temb, config)
        rev = list(reversed(boc))
        self.up_blocks = nn.ModuleList()
        for i, c_out in enumerate(rev):
            c_prev = rev[i - 1] if i > 0 else rev[0]
            c_in = rev[min(i + 1, len(rev) - 1)]
            last = i == len(rev) - 1
            if i == 0:
                self.up_blocks.append(UpBlock3D(c_in, c_out, c_prev, temb, config, add_upsample=True))
            else:
                self.up_blocks.append(CrossAttnUpBlock3D(c_in, c_out, c_prev, temb, config, not last, True))
        self.conv_norm_out = InflatedGroupNorm(config.norm_num_groups, boc[0], eps=config.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = InflatedConv3d(boc[0], config.out_channels, 3, padding=1)
        self.appearance_adapter = AppearanceAdapter(tuple(boc))
        if config.layers_per_block < 2:
            raise ValueError("the appearance adapter is injected after the 2nd layer: layers_per_block must be >= 2")
        # camera-mode K/V hook on the up blocks' spatial self-attentions
        self.camera_hook = CameraHook()
        for bi, block in enumerate(self.up_blocks):
            if block.attentions is None:
                continue
            for ai, attn in enumerate(block.attentions):
                attn.transformer_blocks[0].attn1.kv_hook = (self.camera_hook, f"up_blocks.{bi}.attentions.{ai}")
        self.gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def appearance_features(self, ref_images: torch.Tensor) -> list[torch.Tensor]:
        """ReCtr features of source frames (F, 3, H, W) in [−1, 1]; independent of the latent, so cacheable."""
        return self.appearance_adapter(ref_images)

    def _embed_time(self, timestep, batch: int, device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        if t.ndim == 0:
            t = t[None]
        t = t.expand(batch)
        emb = timestep_embedding(t, self.config.block_out_channels[0], self.config.flip_sin_to_cos,
                                 self.config.freq_shift).to(self.dtype)
        return self.time_embedding(emb)

    def _run(self, fn, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                pose_cond_fea: Optional[torch.Tensor] = None, appearance: Optional[Sequence[torch.Tensor]] = None,
                pose_scale: float = 1.0, up_ft_indices: Optional[Sequence[int]] = None,
                capture_up: Optional[dict] = None, grad_until_up: Optional[int] = None):
        """sample (B, C, F, h, w); encoder_hidden_states (B*F, T, D); pose_cond_fea (B*F or F, C0, h, w);
        appearance: the ReCtr features of the F source frames.

        Returns the v-prediction (B, C, F, h, w), or with ``up_ft_indices`` the list of those up blocks' outputs
        (after their upsamplers) as (B, C, F, h, w) tensors: the estimator's truncated forward. ``capture_up``
        (a dict keyed by up-block index) receives those same outputs during a full forward, for a guidance that
        would otherwise recompute them. ``grad_until_up``: when gradients are enabled, record them only up to that
        up block (the captured features keep their graph; the rest of the forward runs without one).
        """
        b, _, frames, h, w = sample.shape
        n_up = len(self.up_blocks)
        factor = 2 ** (n_up - 1)
        forward_upsample_size = h % factor != 0 or w % factor != 0
        temb = self._embed_time(timestep, b, sample.device)
        x = self.conv_in(to_frames(sample))
        if pose_cond_fea is not None:
            if pose_cond_fea.shape[0] != x.shape[0]:
                pose_cond_fea = pose_cond_fea.repeat(x.shape[0] // pose_cond_fea.shape[0], 1, 1, 1)
            x = x + pose_cond_fea * pose_scale if pose_scale != 1.0 else x + pose_cond_fea
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            feat = appearance[i] if appearance is not None else None
            x, outs = self._run(block, x, temb, encoder_hidden_states, frames, feat)
            skips.extend(outs)
        x = self._run(self.mid_block, x, temb, encoder_hidden_states, frames)
        wanted = sorted(up_ft_indices) if up_ft_indices is not None else None
        feats = []
        grad = torch.is_grad_enabled()
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[-2:] if (i < n_up - 1 and forward_upsample_size) else None
            with torch.set_grad_enabled(grad and (grad_until_up is None or i <= grad_until_up)):
                x = self._run(block, x, block_skips, temb, encoder_hidden_states, frames, size)
            if capture_up is not None and i in capture_up:
                capture_up[i] = to_video(x, frames)
            if wanted is not None and i in wanted:
                feats.append(to_video(x, frames))
                if i == wanted[-1]:
                    return feats
        with torch.set_grad_enabled(grad and grad_until_up is None):
            x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return to_video(x, frames)
