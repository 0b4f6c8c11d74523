"""Diffusion schedule: the official DDIM quantities and the editor's step plan (scaled for step counts ≠ 50)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mf_model.config import SchedulerConfig

OFFICIAL_STEPS = 50
SPACINGS = ("leading", "trailing", "linspace")
BETA_SCHEDULES = ("linear", "scaled_linear")


def train_alphas_cumprod(cfg: SchedulerConfig) -> torch.Tensor:
    """ᾱ over the training timesteps, float32, computed as diffusers' ``DDIMScheduler`` does (same operations in the
    same order, so the values are bit-identical; ``tests/mf_model/test_vae_clip_schedule.py`` checks it)."""
    n = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float32)
    elif cfg.beta_schedule == "scaled_linear":
        betas = torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, n, dtype=torch.float32) ** 2
    else:
        raise ValueError(f"beta_schedule {cfg.beta_schedule!r} is not supported (one of {', '.join(BETA_SCHEDULES)})")
    if cfg.rescale_betas_zero_snr:  # zero terminal SNR (Lin et al. 2024, Algorithm 1)
        root = torch.cumprod(1.0 - betas, dim=0).sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root -= last
        root *= first / (first - last)
        bar = root ** 2
        betas = 1 - torch.cat([bar[0:1], bar[1:] / bar[:-1]])
    return torch.cumprod(1.0 - betas, dim=0)


def inference_timesteps(cfg: SchedulerConfig, steps: int) -> list[int]:
    """The ``steps`` timesteps of a sampling run, largest first (diffusers' spacings)."""
    n = cfg.num_train_timesteps
    if steps > n:
        raise ValueError(f"steps ({steps}) cannot exceed num_train_timesteps ({n})")
    if cfg.timestep_spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
    elif cfg.timestep_spacing == "leading":
        ts = (np.arange(0, steps) * (n // steps)).round()[::-1].astype(np.int64) + cfg.steps_offset
    elif cfg.timestep_spacing == "linspace":
        ts = np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"timestep_spacing {cfg.timestep_spacing!r} is not supported (one of {', '.join(SPACINGS)})")
    ts = [int(t) for t in ts[:steps]]  # trailing's float arange yields one extra (-1) for some step counts
    if not 0 <= min(ts) <= max(ts) < n:
        raise ValueError(f"{steps} steps with {cfg.timestep_spacing} spacing and steps_offset {cfg.steps_offset} "
                         f"reach timesteps outside [0, {n})")
    return ts


@dataclass(frozen=True)
class StepPlan:
    """What the editing branch does at step ``i`` of ``steps``.

    At 50 steps this is exactly the official schedule: guidance on steps 0–9 and even steps 10–28, masked SDE
    noise on 11–19, a ×3 replay on 22/24/26/28, camera K/V from step 20. Other step counts scale every boundary
    proportionally (boundary k ↦ round(k·steps/50)); the parities are taken relative to the scaled boundaries.
    """

    steps: int

    def _b(self, k: int) -> int:
        return int(round(k * self.steps / OFFICIAL_STEPS))

    def guidance(self, i: int) -> bool:
        b10, b30 = self._b(10), self._b(30)
        return i < b10 or (i < b30 and (i - b10) % 2 == 0)

    def sde(self, i: int) -> bool:
        return self._b(10) < i < self._b(20)

    def replays(self, i: int) -> int:
        b20, b30 = self._b(20), self._b(30)
        return 3 if (b20 < i < b30 and (i - b20) % 2 == 0) else 1

    def camera(self, i: int) -> bool:
        return i >= self._b(20)


class Schedule:
    """Timesteps and ᾱ of one sampling run; scalars are float32 0-dim tensors as in the official stack."""

    def __init__(self, cfg: SchedulerConfig, steps: int):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if cfg.prediction_type != "v_prediction" or cfg.clip_sample:
            raise ValueError("the sampler implements DDIM for v-prediction without sample clipping; got "
                             f"prediction_type={cfg.prediction_type!r}, clip_sample={cfg.clip_sample}")
        self.steps = steps
        self.timesteps = inference_timesteps(cfg, steps)
        self.alphas_cumprod = train_alphas_cumprod(cfg)  # float32 (1000,)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        self.step_size = cfg.num_train_timesteps // steps
        self.num_train = cfg.num_train_timesteps
        self.plan = StepPlan(steps)

    def alpha(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def prev(self, t: int) -> int:
        return t - self.step_size

    def variance(self, t: int, s: int) -> torch.Tensor:
        a_t, a_s = self.alpha(t), self.alpha(s)
        return ((1 - a_s) / (1 - a_t)) * (1 - a_t / a_s)

    def ddim_step(self, v: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM (η = 0) for a v-prediction, as diffusers' ``DDIMScheduler.step``."""
        a_t, a_s = self.alpha(t), self.alpha(self.prev(t))
        x0 = a_t ** 0.5 * x - (1 - a_t) ** 0.5 * v
        eps = a_t ** 0.5 * v + (1 - a_t) ** 0.5 * x
        return a_s ** 0.5 * x0 + (1 - a_s) ** 0.5 * eps
