"""Fused long-video mode: the overlapping windows of one group advance in lockstep, and after every denoising step
the latents of the frames that several windows share are replaced by their weighted mean, in the editing branch
and the reconstruction branch alike.

Contracts
---------
- **Spans.** Window k covers the global frames ``[start_k, end_k)`` given by its ``EditWindow.frame_indices``
  (consecutive integers; optional for a lone window). Spans are distinct; the list may come in any order.
- **Fusion weights** (:func:`ramp_weights`, the default). Window k of n frames, local frame j: ``L_in`` = frames it
  shares with the windows that start before it, ``L_out`` = frames it shares with the windows that end after it;
  ``ramp_in(j) = (j+1)/(L_in+1)`` for ``j < L_in`` else 1, ``ramp_out(j) = (n-j)/(L_out+1)`` for ``j >= n-L_out``
  else 1, ``w_k(j) = min(ramp_in, ramp_out)`` — falling towards the window's edges across its overlaps only, never
  0. A frame g covered by the windows K(g) becomes ``Σ_{k∈K(g)} w_k(g)·x_k(g) / Σ_{k∈K(g)} w_k(g)``. For two windows
  overlapping by L frames the later window's normalised weight at overlap frame m is ``(m+1)/(L+1)``: exactly the
  pixel crossfade's (``pipelines.windows.planning.crossfade_weights``), applied to latents at every step instead of
  to pixels once. Callers may pass their own non-negative per-frame weights (normalised the same way).
- **Untouched frames.** A frame in one window only is never written (bit for bit).
- **Order.** The weighted sum runs over the windows sorted by span, whatever order they are stepped in: the result
  does not depend on the visiting order.
- **One window** has no shared frame, so its fused run *is* the plain run (bit for bit).
- **Noise.** Each window draws ``FrameIndexedNoise(seed, frame_indices)`` as in plain mode: the initial noise of a
  frame is a function of (seed, global frame index).

Memory (where the fused state lives)
------------------------------------
Every window's conditions (CLIP, PoCtr and ReCtr features, masks, guidance masks) and its two latents stay on the
model's device for the whole group: each step needs all of them, and streaming them from the host would move
≈0.3 GB per window-step at sd15 512² for no memory the group bound does not already give. A group holds at most
``FUSED_GROUP_WINDOWS`` windows (``mf_model.fusion_plan.fusion_groups`` splits longer requests into balanced groups
of consecutive windows; the pipeline crossfades consecutive groups in pixels, as in crossfade mode), so the memory
of a request is bounded whatever its length — ``mf_model.fused_memory`` states the formula. Inputs and results
(uint8 frames) stay on the host, one group's worth.

Use (one call per group; a group is the unit to resume)::

    for group in fusion_groups(len(plan)):                      # plan: the request's windows, in frame order
        results = model.edit_fused([window(plan[k]) for k in group], options)   # frame_indices = the span
        # results[j] is window group[j]'s EditResult, decoded whole: stitch all windows as in crossfade mode
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from mf_model.fusion_plan import Span, check_spans, ramp_weights, window_spans
from mf_model.noise import FrameIndexedNoise, NoiseProvider
from mf_model.window import FUSED_GROUP_WINDOWS, EditOptions, EditResult, EditWindow


@dataclass
class _Slice:
    local: torch.Tensor  # (n,) long: the window's shared frames, local indices
    slots: torch.Tensor  # (n,) long: their places in the shared-frame buffer
    weight: torch.Tensor  # (n,) float32: normalised weights

    @classmethod
    def of(cls, start: int, end: int, raw: np.ndarray, slot: dict[int, int], total: np.ndarray) -> _Slice:
        frames = [g for g in range(start, end) if g in slot]
        return cls(local=torch.tensor([g - start for g in frames], dtype=torch.long),
                   slots=torch.tensor([slot[g] for g in frames], dtype=torch.long),
                   weight=torch.tensor([raw[g - start] / total[slot[g]] for g in frames], dtype=torch.float32))


def _checked_weights(spans: list[Span], weights: Optional[Sequence[Sequence[float]]]) -> list[np.ndarray]:
    raw = [np.asarray(w, dtype=np.float64) for w in (weights if weights is not None else ramp_weights(spans))]
    if len(raw) != len(spans):
        raise ValueError(f"{len(raw)} weight vectors for {len(spans)} windows")
    for (s, e), w in zip(spans, raw):
        if w.shape != (e - s,) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights of window [{s}, {e}) must be {e - s} finite values >= 0")
    return raw


class LatentFuser:
    """Replaces the shared frames of several windows' latents by their weighted mean (see the module docstring).

    ``spans[k]`` is the global span of window k, ``weights[k]`` its raw per-frame weights (default
    :func:`ramp_weights`); every shared frame needs a positive total weight.
    """

    def __init__(self, spans: Sequence[Span], weights: Optional[Sequence[Sequence[float]]] = None):
        self.spans = check_spans(spans)
        raw = _checked_weights(self.spans, weights)
        self.order = sorted(range(len(self.spans)), key=lambda k: self.spans[k])  # the summation order
        cover: dict[int, int] = {}
        for s, e in self.spans:
            for g in range(s, e):
                cover[g] = cover.get(g, 0) + 1
        self.shared = sorted(g for g, n in cover.items() if n > 1)  # frames in more than one window
        slot = {g: i for i, g in enumerate(self.shared)}
        total = np.zeros(len(self.shared))
        for (s, e), w in zip(self.spans, raw):
            for g in (g for g in range(s, e) if g in slot):
                total[slot[g]] += w[g - s]
        if np.any(total <= 0):
            raise ValueError(f"shared frames {[g for g, t in zip(self.shared, total) if t <= 0]} have a total "
                             "fusion weight of 0")
        self._slices = [_Slice.of(s, e, w, slot, total) for (s, e), w in zip(self.spans, raw)]
        self._by_device: dict[torch.device, list[_Slice]] = {}

    def normalised_weights(self, k: int) -> dict[int, float]:
        """Global frame → normalised weight of window k, for its shared frames."""
        sl, s = self._slices[k], self.spans[k][0]
        return {s + int(j): float(w) for j, w in zip(sl.local, sl.weight)}

    def fuse(self, latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Window k's latents (B, C, F_k, h, w) → the same with shared frames replaced by their weighted mean
        (accumulated in float32 in span order). Windows without shared frames are returned as they are; the others
        as new tensors (the inputs are not modified)."""
        if len(latents) != len(self.spans):
            raise ValueError(f"{len(latents)} latents for {len(self.spans)} windows")
        if not self.shared:
            return list(latents)
        ref = latents[0]
        b, c, _, h, w = ref.shape
        slices = self._on(ref.device)
        acc = torch.zeros(b, c, len(self.shared), h, w, dtype=torch.float32, device=ref.device)
        for k in self.order:
            sl = slices[k]
            if sl.local.numel():  # slots are distinct within a window: no index is added to twice in one call
                acc[:, :, sl.slots] += latents[k].index_select(2, sl.local).float() * sl.weight.view(1, 1, -1, 1, 1)
        out = []
        for x, sl in zip(latents, slices):
            if not sl.local.numel():
                out.append(x)
                continue
            y = x.clone()
            y[:, :, sl.local] = acc[:, :, sl.slots].to(x.dtype)
            out.append(y)
        return out

    def _on(self, device: torch.device) -> list[_Slice]:
        if device not in self._by_device:
            self._by_device[device] = [_Slice(s.local.to(device), s.slots.to(device), s.weight.to(device))
                                       for s in self._slices]
        return self._by_device[device]


def run_lockstep(sampler, states: Sequence, fuser: LatentFuser,
                 progress: Optional[Callable[[int, int], None]] = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Step every state (``TwoBranchSampler.start`` results, in ``fuser``'s window order) through all steps; after
    each step fuse the editing latents and the reconstruction latents. ``progress(done, total)`` is called after
    every window's step (``total = steps × windows``: one window reports as the plain mode does; raising from it
    cancels within one window step). Returns ``finish`` of each state."""
    steps, n = sampler.sched.steps, len(states)
    for i in range(steps):
        for k, state in enumerate(states):
            sampler.step(state)
            if progress:
                progress(i * n + k + 1, steps * n)
        xs = fuser.fuse([s.x for s in states])
        recs = fuser.fuse([s.x_rec for s in states])
        for state, x, x_rec in zip(states, xs, recs):
            state.x, state.x_rec = x, x_rec
    return [sampler.finish(s) for s in states]


def edit_fused(model, windows: Sequence[EditWindow], options: EditOptions,
               weights: Optional[Sequence[Sequence[float]]] = None, noises: Optional[Sequence[NoiseProvider]] = None,
               reconstruction: bool = False, progress: Optional[Callable[[int, int], None]] = None,
               tap=None, max_windows: int = FUSED_GROUP_WINDOWS) -> list[EditResult]:
    """``MotionFollower.edit_fused``: one group of windows (any order) → one ``EditResult`` per window, in the
    given order. Every window is encoded (its conditions stay on the model's device), all are stepped in lockstep
    with their latents fused after each step, then each is decoded whole (its shared frames are equal in every
    window that holds them, so a pixel crossfade over them changes nothing). ``info["fusion"]`` says what ran;
    ``seconds`` is the group's wall time shared out equally, ``info["timings"]`` the group's. ``tap`` sees every
    window's sampler values (window after window within a step)."""
    start = time.perf_counter()
    if len(windows) > max_windows:
        raise ValueError(f"{len(windows)} windows in one fused group; at most {max_windows} (split the request "
                         "with mf_model.fusion_plan.fusion_groups)")
    for w in windows:
        w.validate()
    spans = window_spans(windows)
    fuser = LatentFuser(spans, weights)
    if noises is None:
        noises = [FrameIndexedNoise(options.seed, range(s, e)) for s, e in spans]
    if len(noises) != len(windows):
        raise ValueError(f"{len(noises)} noise providers for {len(windows)} windows")
    sampler = model.sampler(options, tap)
    states = [sampler.start(model.encode(w), noise) for w, noise in zip(windows, noises)]
    finals = run_lockstep(sampler, states, fuser, progress)
    del states  # the group's conditions
    timings = {k: list(v) for k, v in sampler.timings.items()}
    results = []
    for k, (x, x_rec) in enumerate(finals):
        result = model.result(x, x_rec, options, reconstruction, timings, start)
        result.info["fusion"] = {"mode": "fused", "span": list(spans[k]), "group_windows": len(windows),
                                 "shared_weights": fuser.normalised_weights(k)}
        results.append(result)
    seconds = time.perf_counter() - start
    for result in results:
        result.seconds = seconds / len(results)
    return results
