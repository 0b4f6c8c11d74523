"""The two-branch sampler: reconstruction and score-guided editing, run in lockstep.

Editing step i needs only the reconstruction latent that entered step i and (camera mode) the reconstruction's
up-block K/V of step i. Lockstep runs reconstruction step i, then editing step i, then drops step i's state, so
memory is O(one step) and the result equals running the branches one after the other (``lockstep=False`` does
that, keeping every step's latents and K/V, for verification).

Step-wise: ``start(c, noise) -> SamplerState``, ``step(state)`` (one lockstep step of both branches),
``finish(state)``; ``run`` is exactly these three, so windows can also advance side by side and have their latents
fused between steps (:mod:`mf_model.fused`).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch

from mf_model.camera import KVBank, camera_mode
from mf_model.cost import guidance_graph_bytes
from mf_model.guidance import GuidanceMasks, GuidanceWeights, score_guidance
from mf_model.host_memory import release_host_memory, reuse_freed_blocks
from mf_model.noise import NoiseProvider
from mf_model.schedule import Schedule
from mf_model.unet import UNet3DConditionModel

log = logging.getLogger(__name__)
Tap = Callable[[str, int, object], None]
GUIDANCE_UP_BLOCKS = (1, 2)  # the estimator features the guidance energies compare


@dataclass
class Conditions:
    """Everything the sampler needs, already encoded (F frames, model dtype/device)."""

    clip: torch.Tensor  # (F, 1, D) per-frame CLIP image embeddings
    pose_src: torch.Tensor  # (F, C0, h, w) PoCtr features of the source poses
    pose_tgt: torch.Tensor  # (F, C0, h, w) PoCtr features of the target poses
    app_unet: Sequence[torch.Tensor]  # ReCtr features of the denoising UNet
    app_est: Sequence[torch.Tensor]  # ReCtr features of the estimator
    source_masks: torch.Tensor  # (F, 1, H, W) {0,1}
    target_masks: torch.Tensor  # (F, 1, H, W) {0,1}
    latent_shape: tuple[int, int, int, int, int]


@dataclass
class SamplerState:
    """One window between two steps of :meth:`TwoBranchSampler.step`: its conditions, noise, guidance masks and the
    latents (edit, reconstruction) that enter step ``i``."""

    c: Conditions
    noise: NoiseProvider
    masks: GuidanceMasks
    x: torch.Tensor  # (1, 4, F, h, w) editing-branch latent entering step i
    x_rec: torch.Tensor  # (1, 4, F, h, w) reconstruction latent entering step i
    checkpointing: bool  # activation checkpointing of the estimator in this window's guidance
    i: int = 0


def available_device_bytes(device: torch.device) -> int:
    """Bytes a new allocation on ``device`` can take: what the driver reports free plus what PyTorch's caching
    allocator holds reserved but unused (after a first window most of the window's memory sits there)."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


class TwoBranchSampler:
    def __init__(self, unet: UNet3DConditionModel, estimator: UNet3DConditionModel, schedule: Schedule,
                 guidance_scale: float, camera: bool, weights: GuidanceWeights = GuidanceWeights(),
                 sde_strength: float = 0.4, tap: Optional[Tap] = None, checkpointing: Optional[bool] = None):
        self.unet, self.estimator, self.sched = unet, estimator, schedule
        self.guidance_scale, self.camera = guidance_scale, camera
        self.weights, self.sde_strength = weights, sde_strength
        self.tap = tap or (lambda name, i, value: None)
        self.timings: dict[str, list[float]] = defaultdict(list)  # seconds per call, by phase
        self.checkpointing = checkpointing  # activation checkpointing in guidance; None: decide from free memory
        # a weight-sharing estimator's reference features ARE the reconstruction forward's up-block outputs
        self.share_rec_features = estimator is unet
        # ... and its edit features are the conditional half of the step's CFG forward, which records their graph
        self.share_edit_features = estimator is unet
        self._rec_feats: Optional[tuple[int, list[torch.Tensor]]] = None  # (step, features) of the current step

    @contextmanager
    def _timed(self, phase: str):
        cuda = self.unet.conv_in.weight.is_cuda
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize()
        else:  # the phase's freed activations back to the OS before the next phase grows (host_memory)
            release_host_memory()
        self.timings[phase].append(time.perf_counter() - start)

    # -- one reconstruction step -------------------------------------------------------------------------------
    def _rec_step(self, i: int, x_rec: torch.Tensor, c: Conditions, bank: Optional[KVBank],
                  capture: bool = False) -> torch.Tensor:
        t = self.sched.timesteps[i]
        feats = {k: None for k in GUIDANCE_UP_BLOCKS} if capture and self.sched.plan.guidance(i) else None
        with camera_mode(self.unet.camera_hook, "save" if bank is not None else None, bank), \
                self._timed("reconstruction_forward"):
            v = self.unet(x_rec, t, c.clip, c.pose_src, c.app_unet, capture_up=feats)
        self._rec_feats = (i, [feats[k] for k in GUIDANCE_UP_BLOCKS]) if feats is not None else None
        self.tap("rec_unet_out", i, v)
        return self.sched.ddim_step(v, t, x_rec)

    # -- one editing step (with its replays) -------------------------------------------------------------------
    def _features(self, c: Conditions, t: int):
        def run(latent: torch.Tensor, is_edit: bool):
            pose = c.pose_tgt if is_edit else c.pose_src
            return self.estimator(latent, t, c.clip, pose, c.app_est, up_ft_indices=list(GUIDANCE_UP_BLOCKS))
        return run

    def _guidance(self, i: int, t: int, x: torch.Tensor, x_rec: torch.Tensor, c: Conditions,
                  masks: GuidanceMasks, edit: Optional[tuple] = None) -> torch.Tensor:
        rec = self._rec_feats[1] if self._rec_feats is not None and self._rec_feats[0] == i else None
        with self._timed("guidance"):
            return score_guidance(self._features(c, t), x, x_rec, masks, self.weights, rec_feats=rec, edit=edit)

    def _edit_forward(self, x: torch.Tensor, t: int, c: Conditions, record: bool):
        """The editing branch's (CFG) v-prediction; with ``record``, also ``(x_leaf, features)``: the guidance's
        edit features, taken from the conditional forward with their graph (up to the last guidance block)."""
        use_cfg = self.guidance_scale > 1.0
        if not record:
            if not use_cfg:
                return self.unet(x, t, c.clip, c.pose_tgt, c.app_unet), None
            cond_cfg = torch.cat([torch.zeros_like(c.clip), c.clip])
            v_u, v_c = self.unet(torch.cat([x, x]), t, cond_cfg, c.pose_tgt, c.app_unet).chunk(2)
            return (v_u, v_c), None
        # the unconditional half first, so that its activations are gone before the conditional half's graph
        v_u = self.unet(x, t, torch.zeros_like(c.clip), c.pose_tgt, c.app_unet) if use_cfg else None
        feats = {k: None for k in GUIDANCE_UP_BLOCKS}
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            v_c = self.unet(xg, t, c.clip, c.pose_tgt, c.app_unet, capture_up=feats,
                            grad_until_up=max(GUIDANCE_UP_BLOCKS)).detach()
        edit = (xg, [feats[k] for k in GUIDANCE_UP_BLOCKS])
        return ((v_u, v_c) if use_cfg else v_c), edit

    def _edit_step(self, i: int, x: torch.Tensor, x_rec: torch.Tensor, c: Conditions, masks: GuidanceMasks,
                   bank: Optional[KVBank], noise: NoiseProvider) -> torch.Tensor:
        sched, plan = self.sched, self.sched.plan
        t = sched.timesteps[i]
        s = sched.prev(t)
        a_t, a_s = sched.alpha(t), sched.alpha(s)
        use_cfg = self.guidance_scale > 1.0
        # the estimator's edit forward is the conditional UNet forward when they share weights and no
        # reconstruction K/V are injected into the latter (camera mode) at this step
        record = plan.guidance(i) and self.share_edit_features and bank is None
        reps = plan.replays(i)
        x_prev = x
        for r in range(reps):
            with camera_mode(self.unet.camera_hook, "inject" if bank is not None else None, bank), \
                    self._timed("edit_forward"):
                out, edit = self._edit_forward(x, t, c, record)
                v = out[0] + self.guidance_scale * (out[1] - out[0]) if use_cfg else out
            if r == 0:
                self.tap("edit_unet_out", i, out)
            v_org = v
            if plan.guidance(i):
                g = self._guidance(i, t, x, x_rec, c, masks, edit=edit)
                del edit
                self.tap("guidance", i, g)
                v = v + g
            x0 = a_t ** 0.5 * x - (1 - a_t) ** 0.5 * v
            eps = a_t ** 0.5 * v_org + (1 - a_t) ** 0.5 * x
            if plan.sde(i):
                sigma_rd = self.sde_strength * sched.variance(t, s) ** 0.5
                x_det = a_s ** 0.5 * x0 + (1 - a_s) ** 0.5 * eps
                x_rd = a_s ** 0.5 * x0 + (1 - a_s - sigma_rd ** 2) ** 0.5 * eps
                z = noise.step(i, tuple(x.shape), x.dtype, x.device)
                m = masks.target_latent.to(x.dtype)
                x_prev = x_det * (1 - m) + (x_rd + sigma_rd * z) * m
            else:
                x_prev = a_s ** 0.5 * x0 + (1 - a_s) ** 0.5 * eps
            if r < reps - 1:  # replay: re-noise x_prev from s back to t (the official's last re-noise is unused)
                s_re = max(min(s, sched.num_train - 1), 0)
                a_re = sched.alpha(s_re)
                with self._timed("replay_forward"):
                    v_re = self.unet(x_prev, s_re, c.clip, c.pose_tgt, c.app_unet)
                x0_re = a_re ** 0.5 * x_prev - (1 - a_re) ** 0.5 * v_re
                eps_re = a_re ** 0.5 * v_re + (1 - a_re) ** 0.5 * x_prev
                x = a_t ** 0.5 * x0_re + (1 - a_t) ** 0.5 * eps_re
        return x_prev

    def use_checkpointing(self, latent_shape) -> bool:
        """Checkpoint the estimator in guidance? The explicit option, else: on CUDA when the guidance graph
        (estimated, with a margin) does not fit the free device memory; never on the CPU."""
        if self.checkpointing is not None:
            return bool(self.checkpointing)
        weight = self.estimator.conv_in.weight
        if not weight.is_cuda:
            return False
        free = available_device_bytes(weight.device)
        need = guidance_graph_bytes(self.estimator.config, latent_shape, weight.element_size())
        use = 1.25 * need > free
        log.info("guidance graph ≈%.1f GiB, %.1f GiB free: activation checkpointing %s", need / 2**30,
                 free / 2**30, "on" if use else "off")
        return use

    # -- step-wise API: several windows can advance in lockstep (mf_model.fused) ----------------------------------
    def start(self, c: Conditions, noise: NoiseProvider) -> SamplerState:
        """The state before step 0: the initial latent (both branches start from it), the guidance masks and the
        activation-checkpointing decision of this window."""
        dtype, device = c.clip.dtype, c.clip.device
        x_t = noise.initial(c.latent_shape, dtype, device)
        self.tap("initial_noise", -1, x_t)
        masks = GuidanceMasks.build(c.source_masks, c.target_masks, c.latent_shape[-2:])
        for region, frames in masks.empty.items():
            if frames:
                log.warning("mask region %r is empty in frames %s: those frames' %r guidance terms are skipped",
                            region, frames, region)
        checkpointing = self.use_checkpointing(c.latent_shape)
        self.estimator.gradient_checkpointing = checkpointing
        if not x_t.is_cuda:
            reuse_freed_blocks()  # large CPU tensors reuse freed heap blocks within a phase (host_memory)
        return SamplerState(c=c, noise=noise, masks=masks, x=x_t, x_rec=x_t, checkpointing=checkpointing)

    def _bank(self, c: Conditions, i: int) -> Optional[KVBank]:
        return KVBank(c.source_masks, c.target_masks) if self.camera and self.sched.plan.camera(i) else None

    @torch.no_grad()
    def step(self, state: SamplerState) -> SamplerState:
        """Advance ``state`` by one denoising step (step ``state.i``): reconstruction step i, then editing step i,
        then step i's K/V and features are dropped. Only ``state`` is read and written (nothing of one window's
        step stays in the sampler), so windows may be stepped in any order and their latents edited between
        steps."""
        i = state.i
        if i >= self.sched.steps:
            raise ValueError(f"state already ran all {self.sched.steps} steps")
        self.estimator.gradient_checkpointing = state.checkpointing
        bank = self._bank(state.c, i)
        self.tap("rec_latent", i, state.x_rec)
        x_rec_next = self._rec_step(i, state.x_rec, state.c, bank, capture=self.share_rec_features)
        if bank is not None:
            self.tap("kv", i, bank)
        x = self._edit_step(i, state.x, state.x_rec, state.c, state.masks, bank, state.noise)
        self.tap("edit_latent", i, x)
        state.x, state.x_rec, state.i, self._rec_feats = x, x_rec_next, i + 1, None
        return state

    def finish(self, state: SamplerState) -> tuple[torch.Tensor, torch.Tensor]:
        """(edited latents, reconstruction latents), both (1, 4, F, h, w), of a state that ran every step."""
        if state.i != self.sched.steps:
            raise ValueError(f"state ran {state.i} of {self.sched.steps} steps")
        return state.x, state.x_rec

    # -- the whole run ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, c: Conditions, noise: NoiseProvider, lockstep: bool = True,
            progress: Optional[Callable[[int, int], None]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (edited latents, reconstruction latents), both (1, 4, F, h, w): ``start``, every ``step``,
        ``finish``."""
        state = self.start(c, noise)
        steps = self.sched.steps
        if lockstep:
            for i in range(steps):
                self.step(state)
                if progress:
                    progress(i + 1, steps)
            return self.finish(state)
        # sequential: the whole reconstruction first (the official order), then the editing branch
        rec_latents, banks = [], []
        x_rec, x = state.x_rec, state.x
        for i in range(steps):
            bank = self._bank(c, i)
            rec_latents.append(x_rec)
            self.tap("rec_latent", i, x_rec)
            x_rec = self._rec_step(i, x_rec, c, bank)
            banks.append(bank)
        for i in range(steps):
            x = self._edit_step(i, x, rec_latents[i], c, state.masks, banks[i], noise)
            self.tap("edit_latent", i, x)
            if progress:
                progress(i + 1, steps)
        return x, x_rec
