"""Diffusion schedule: the official DDIM quantities and the editor's step plan (scaled for step counts ≠ 50)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import DDIMScheduler

from mf_model.config import SchedulerConfig

OFFICIAL_STEPS = 50


def make_scheduler(cfg: SchedulerConfig, steps: int) -> DDIMScheduler:
    sched = DDIMScheduler(**asdict(cfg))
    sched.set_timesteps(steps)
    return sched


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
        sched = make_scheduler(cfg, steps)
        self.steps = steps
        self.timesteps = [int(t) for t in sched.timesteps]
        self.alphas_cumprod = sched.alphas_cumprod.clone()  # float32 (1000,)
        self.final_alpha_cumprod = sched.final_alpha_cumprod
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
