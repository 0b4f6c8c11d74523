"""The unit of work of the model: one window of at most 32 frames, ready-made conditions."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

MAX_WINDOW_FRAMES = 32  # rows of the motion modules' temporal position encoding
# The faster preset ("faster, not validated for quality without real weights"): 25 steps with the official step
# plan scaled (schedule.StepPlan), windows of 32 frames overlapping by 8 (24 new frames per window instead of 16).
# benchmarks/window_flops.py --steps 25 --frames 32 counts it.
FAST_STEPS, FAST_WINDOW_FRAMES, FAST_OVERLAP = 25, 32, 8
# How a request's overlapping windows are joined: "crossfade" edits each window alone and blends the overlaps in
# pixels; "fused" steps the windows of a group in lockstep and fuses the shared frames' latents after every step
# (mf_model.fused; better consistency is the expected effect with real weights, not measured without them).
FUSION_MODES = ("crossfade", "fused")
# At most this many windows are fused together (their conditions all stay on the device, mf_model.fused_memory);
# a longer request is split into groups (mf_model.fusion_plan.fusion_groups) that are crossfaded like windows.
FUSED_GROUP_WINDOWS = 8


class WindowError(ValueError):
    """A window whose arrays cannot be edited (counts, sizes, dtypes)."""


@dataclass
class EditOptions:
    """Sampler options of one edit.

    ``steps`` other than 50 scale the official step schedule proportionally; 50 reproduces it exactly.
    """

    steps: int = 50
    guidance_scale: float = 3.5  # classifier-free guidance scale; <= 1 turns it off
    camera: bool = False
    seed: int = 42
    # guidance / sampler constants of the official editor (spec §7.4-§7.5)
    energy_scale: float = 4000.0
    guidance_factor: float = 0.04
    sde_strength: float = 0.4
    decode: bool = True
    # activation checkpointing of the estimator during guidance (less memory, one more estimator forward per
    # guidance call): None decides from free device memory on CUDA and leaves it off on the CPU
    guidance_checkpointing: Optional[bool] = None
    # one of FUSION_MODES: read by the caller that plans a request's windows (edit() edits one window either way;
    # "fused" requests go through MotionFollower.edit_fused, group by group)
    fusion: str = "crossfade"

    def __post_init__(self):
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}")

    @classmethod
    def fast(cls, **overrides) -> EditOptions:
        """The faster preset's options (``FAST_STEPS``; use with ``FAST_WINDOW_FRAMES``/``FAST_OVERLAP``) —
        faster, not validated for quality without real weights."""
        return cls(**{"steps": FAST_STEPS, **overrides})


@dataclass
class EditWindow:
    """Frames and conditions of one window, all at the model resolution (H, W divisible by 8).

    - ``source_frames``: (F, H, W, 3) uint8 RGB frames of the source video.
    - ``source_poses`` / ``target_poses``: (F, H, W, 3) uint8 pose renderings (official palette).
    - ``source_masks`` / ``target_masks``: (F, H, W) uint8 {0, 255} or bool, person = nonzero.
    - ``frame_indices``: global frame index of each frame; the initial noise of a frame is a function of
      (seed, global frame index) only, so overlapping windows start from the same noise for shared frames.
    - ``clip_frames``: optional original-resolution frames for the CLIP path (defaults to ``source_frames``).
    """

    source_frames: np.ndarray
    source_poses: np.ndarray
    target_poses: np.ndarray
    source_masks: np.ndarray
    target_masks: np.ndarray
    frame_indices: Optional[Sequence[int]] = None
    clip_frames: Optional[Sequence[np.ndarray]] = None
    name: str = "window"

    @property
    def num_frames(self) -> int:
        return int(self.source_frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.source_frames.shape[1]), int(self.source_frames.shape[2])

    def validate(self) -> None:
        name = self.name
        f = self.num_frames
        if self.source_frames.ndim != 4 or self.source_frames.shape[-1] != 3:
            raise WindowError(f"{name}: source_frames must be (F, H, W, 3), got {tuple(self.source_frames.shape)}")
        if f < 1:
            raise WindowError(f"{name}: a window needs at least one frame")
        if f > MAX_WINDOW_FRAMES:
            raise WindowError(
                f"{name}: {f} frames in one window; at most {MAX_WINDOW_FRAMES} fit the temporal position encoding "
                "(split the video into windows)"
            )
        h, w = self.size
        if h % 8 or w % 8:
            raise WindowError(f"{name}: frame size {w}x{h} is not divisible by 8")
        for label, arr, nd in (
            ("source_poses", self.source_poses, 4),
            ("target_poses", self.target_poses, 4),
            ("source_masks", self.source_masks, 3),
            ("target_masks", self.target_masks, 3),
        ):
            arr = np.asarray(arr)
            if arr.ndim == 4 and nd == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if arr.ndim != nd:
                raise WindowError(f"{name}: {label} must have {nd} dimensions, got shape {tuple(arr.shape)}")
            if arr.shape[0] != f:
                raise WindowError(f"{name}: {label} has {arr.shape[0]} frames but source_frames has {f}")
            if tuple(arr.shape[1:3]) != (h, w):
                raise WindowError(
                    f"{name}: {label} size {arr.shape[2]}x{arr.shape[1]} differs from the frames' {w}x{h}"
                )
        if self.frame_indices is not None and len(self.frame_indices) != f:
            raise WindowError(f"{name}: {len(self.frame_indices)} frame_indices for {f} frames")
        if self.clip_frames is not None and len(self.clip_frames) != f:
            raise WindowError(f"{name}: {len(self.clip_frames)} clip_frames for {f} frames")


@dataclass
class EditResult:
    frames: np.ndarray  # (F, H, W, 3) uint8 edited frames
    reconstruction: Optional[np.ndarray] = None  # (F, H, W, 3) uint8, when requested
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
