"""Injectable noise providers.

The sampler asks for the initial latent once and for one SDE noise tensor at each SDE step. Providers:

- :class:`SequentialNoise` — draws from one generator seeded with ``seed``, in the official order (x_T, then one
  tensor per SDE step): a whole-clip edit reproduces the official random stream (float32 draws; the official
  fp16 CPU kernel of torch 2.0.1 is not reproduced).
- :class:`FrameIndexedNoise` — the noise of global frame k is a function of (seed, k, purpose) only, so every window
  containing frame k starts from the same noise for it (long videos edited in overlapping windows).
- :class:`ArrayNoise` — exact tensors given by the caller (golden tests).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Optional

import torch


class NoiseProvider:
    def initial(self, shape, dtype, device) -> torch.Tensor:
        raise NotImplementedError

    def step(self, i: int, shape, dtype, device) -> torch.Tensor:
        raise NotImplementedError


class SequentialNoise(NoiseProvider):
    def __init__(self, seed: int):
        self.gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def initial(self, shape, dtype, device):
        return torch.randn(shape, generator=self.gen, dtype=torch.float32).to(device=device, dtype=dtype)

    def step(self, i, shape, dtype, device):
        return torch.randn(shape, generator=self.gen, dtype=torch.float32).to(device=device, dtype=dtype)


def _frame_seed(seed: int, frame: int, purpose: str) -> int:
    digest = hashlib.sha256(f"{int(seed)}:{int(frame)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class FrameIndexedNoise(NoiseProvider):
    """Noise laid out (1, C, F, h, w), each frame slice drawn from its own (seed, global frame) generator."""

    def __init__(self, seed: int, frame_indices: Sequence[int]):
        self.seed = int(seed)
        self.frames = [int(k) for k in frame_indices]

    def _draw(self, purpose: str, shape, dtype, device):
        b, c, f, h, w = shape
        if f != len(self.frames):
            raise ValueError(f"noise for {f} frames requested, {len(self.frames)} frame indices given")
        slices = []
        for k in self.frames:
            g = torch.Generator(device="cpu").manual_seed(_frame_seed(self.seed, k, purpose))
            slices.append(torch.randn((b, c, h, w), generator=g, dtype=torch.float32))
        return torch.stack(slices, dim=2).to(device=device, dtype=dtype)

    def initial(self, shape, dtype, device):
        return self._draw("init", shape, dtype, device)

    def step(self, i, shape, dtype, device):
        return self._draw(f"sde{i}", shape, dtype, device)


class ArrayNoise(NoiseProvider):
    def __init__(self, initial: torch.Tensor, steps: Optional[Sequence[torch.Tensor]] = None):
        self._initial = initial
        self._steps = list(steps or [])
        self._next = 0

    def initial(self, shape, dtype, device):
        if tuple(self._initial.shape) != tuple(shape):
            raise ValueError(f"given initial noise has shape {tuple(self._initial.shape)}, expected {tuple(shape)}")
        return self._initial.to(device=device, dtype=dtype)

    def step(self, i, shape, dtype, device):
        if self._next >= len(self._steps):
            raise ValueError(f"no step noise left for step {i} ({len(self._steps)} given)")
        z = self._steps[self._next]
        self._next += 1
        return z.to(device=device, dtype=dtype)
