"""The CLIP ViT image encoder of SD image-variations (``CLIPVisionModelWithProjection``'s architecture and keys).

Our own module rather than transformers' class: the edit needs one forward of it, and importing transformers'
modelling stack costs the model process about 150 MiB of resident memory for code it never runs. Parameter names
are those of the official ``image_encoder`` files; the configuration is the same ``config.json`` dictionary.
``tests/mf_model/test_vae_clip_schedule.py`` checks it against transformers' class on the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


@dataclass(frozen=True)
class ClipVisionConfig:
    """The fields of a CLIP vision ``config.json`` the encoder uses (defaults as transformers' ``CLIPVisionConfig``)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_dict(cls, d: dict) -> ClipVisionConfig:
        top = d
        d = d.get("vision_config", d)  # a full CLIPConfig nests the vision part (its projection_dim on top)
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "projection_dim" not in kw and "projection_dim" in top:
            kw["projection_dim"] = top["projection_dim"]
        cfg = cls(**kw)
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"image encoder: hidden_act {cfg.hidden_act!r} is not supported "
                             f"(supported: {', '.join(ACTIVATIONS)})")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"image encoder: hidden_size {cfg.hidden_size} is not a multiple of "
                             f"num_attention_heads {cfg.num_attention_heads}")
        return cfg


class Embeddings(nn.Module):
    def __init__(self, c: ClipVisionConfig):
        super().__init__()
        self.image_size = c.image_size
        self.class_embedding = nn.Parameter(torch.randn(c.hidden_size) * c.hidden_size ** -0.5)
        self.patch_embedding = nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size, stride=c.patch_size, bias=False)
        self.position_embedding = nn.Embedding((c.image_size // c.patch_size) ** 2 + 1, c.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        side = self.image_size
        if tuple(pixels.shape[-2:]) != (side, side):
            raise ValueError(f"image encoder: input of {tuple(pixels.shape[-2:])} pixels, the model takes "
                             f"{side}x{side}")
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(pixels.shape[0], 1, -1)
        positions = torch.arange(patches.shape[1] + 1, device=pixels.device)
        return torch.cat([cls, patches], dim=1) + self.position_embedding(positions)[None]


class SelfAttention(nn.Module):
    def __init__(self, c: ClipVisionConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(c.hidden_size, c.hidden_size) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t):
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, c: ClipVisionConfig):
        super().__init__()
        self.act = ACTIVATIONS[c.hidden_act]
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, c: ClipVisionConfig):
        super().__init__()
        self.self_attn = SelfAttention(c)
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = Mlp(c)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, c: ClipVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.num_hidden_layers))


class VisionTransformer(nn.Module):
    def __init__(self, c: ClipVisionConfig):
        super().__init__()
        self.embeddings = Embeddings(c)
        self.pre_layrnorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)  # sic: the official key name
        self.encoder = Encoder(c)
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled output: the class token after the last layer and the post layer norm."""
        x = self.pre_layrnorm(self.embeddings(pixels))
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x[:, 0])


class ClipImageEncoder(nn.Module):
    """Pixels (B, 3, S, S), CLIP-normalised → image embeddings (B, projection_dim)."""

    def __init__(self, config: dict | ClipVisionConfig):
        super().__init__()
        c = config if isinstance(config, ClipVisionConfig) else ClipVisionConfig.from_dict(config)
        self.config = c
        self.vision_model = VisionTransformer(c)
        self.visual_projection = nn.Linear(c.hidden_size, c.projection_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values))
