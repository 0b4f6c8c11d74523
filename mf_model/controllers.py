"""The two light convolutional controllers: PoCtr (``PoseGuider``) and ReCtr (``Appearance_Adapter``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mf_model.layers import InflatedConv3d


class PoseGuider(nn.Module):
    """PoCtr: pose renderings (B*F, 3, H, W) in [0, 1] → features added after the UNet's ``conv_in``."""

    def __init__(self, conditioning_embedding_channels: int, conditioning_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (16, 32, 96, 256)):
        super().__init__()
        self.conv_in = InflatedConv3d(conditioning_channels, block_out_channels[0], 3, padding=1)
        blocks = []
        for c_in, c_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            blocks.append(InflatedConv3d(c_in, c_in, 3, padding=1))
            blocks.append(InflatedConv3d(c_in, c_out, 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = InflatedConv3d(block_out_channels[-1], conditioning_embedding_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(x))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


class AdapterBlock(nn.Module):
    """Residual block of the appearance adapter: optional 2×2 average pool and 1×1 ``in_conv``."""

    def __init__(self, c_in: int, c_out: int, down: bool, ksize: int = 1):
        super().__init__()
        self.down = down
        self.in_conv = nn.Conv2d(c_in, c_out, ksize, 1, ksize // 2) if c_in != c_out else None
        self.block1 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.block2 = nn.Conv2d(c_out, c_out, ksize, 1, ksize // 2)

    def forward(self, x):
        if self.down:
            x = F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return self.block2(F.relu(self.block1(x))) + x


class AppearanceAdapter(nn.Module):
    """ReCtr: source frames (B*F, 3, H, W) in [−1, 1] → one feature map per UNet down level."""

    def __init__(self, channels: tuple[int, ...], cin: int = 192, nums_rb: int = 2, ksize: int = 1):
        super().__init__()
        self.nums_rb = nums_rb
        body = []
        for i, c in enumerate(channels):
            for j in range(nums_rb):
                if i != 0 and j == 0:
                    body.append(AdapterBlock(channels[i - 1], c, down=True, ksize=ksize))
                else:
                    body.append(AdapterBlock(c, c, down=False, ksize=ksize))
        self.body = nn.ModuleList(body)
        self.conv_in = nn.Conv2d(cin, channels[0], 3, 1, 1)
        self.unshuffle = nn.PixelUnshuffle(int(round((cin // 3) ** 0.5)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv_in(self.unshuffle(x))
        feats = []
        for i in range(len(self.body) // self.nums_rb):
            for j in range(self.nums_rb):
                x = self.body[i * self.nums_rb + j](x)
            feats.append(x)
        return feats
