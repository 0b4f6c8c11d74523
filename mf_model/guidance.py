"""Score guidance of the editing branch (the official release's ``guidance_edit`` energies).

The official code nearest-upsamples the estimator's ``up_blocks.1``/``up_blocks.2`` features to twice the latent
size (128² at 512²) and averages over mask regions there. Nearest upsampling only replicates feature pixels, so
every region mean equals a *weighted* mean at the features' native resolution, the weight of a feature pixel being
the number of mask pixels that replicate it. We compute it that way: the same energies (up to float summation
order) without the 16×/4× larger feature maps, and the same gradients.

An empty region in a frame (e.g. no target person) would make the official guidance NaN; here that frame's term
is skipped and the frame average runs over the frames where the region is non-empty.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class GuidanceWeights:
    w_fg: float = 4.0
    w_content: float = 6.0
    w_contrast: float = 1.2
    w_inpaint: float = 1.2
    loss_scale: tuple[float, float] = (0.5, 0.5)
    energy_scale: float = 4000.0
    factor: float = 0.04


def _nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of every output position of a nearest resize (the same rule ``F.interpolate`` uses)."""
    src = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in)
    return F.interpolate(src, size=n_out, mode="nearest").view(n_out).long()


def _pool_matrix(n_in: int, n_out: int, device) -> torch.Tensor:
    """(n_in, n_out) one-hot: column a selects the feature row replicated at output position a."""
    idx = _nearest_index(n_in, n_out).to(device)
    m = torch.zeros(n_in, n_out, device=device)
    m[idx, torch.arange(n_out, device=device)] = 1.0
    return m


@dataclass
class GuidanceMasks:
    """Region masks on the guidance grid (2·latent size), as per-feature-pixel counts for each feature level."""

    grid: tuple[int, int]
    regions: dict  # name -> (F, Hm, Wm) float {0,1}
    target_latent: torch.Tensor  # (1, 1, F, h, w) float {0,1} (the official T_lat)
    _counts: dict = field(default_factory=dict)
    empty: dict = field(default_factory=dict)  # name -> list of frames where the region is empty

    @classmethod
    def build(cls, source_masks: torch.Tensor, target_masks: torch.Tensor, latent_hw: tuple[int, int]):
        """source/target masks: (F, 1, H, W) {0,1} at pixel resolution."""
        h, w = latent_hw
        grid = (2 * h, 2 * w)
        s = F.interpolate(source_masks.float(), size=grid, mode="nearest")[:, 0]
        t = F.interpolate(target_masks.float(), size=grid, mode="nearest")[:, 0]
        regions = {
            "target": (t > 0.5).float(),
            "source": (s > 0.5).float(),
            "over": ((1 - s) * (1 - t) > 0.5).float(),
            "body": (s * (1 - t) > 0.5).float(),
            "minus": ((1 - s) > 0.5).float(),
        }
        t_lat = F.interpolate(target_masks.float(), size=(h, w), mode="nearest")[:, 0]
        empty = {k: [int(f) for f in torch.nonzero(v.sum(dim=(1, 2)) == 0).flatten()] for k, v in regions.items()}
        return cls(grid=grid, regions=regions, target_latent=t_lat[None, None], empty=empty)

    def counts(self, name: str, hw: tuple[int, int]) -> torch.Tensor:
        """(F, h_l*w_l) weights: how many grid pixels of region ``name`` replicate each feature pixel."""
        key = (name, hw)
        if key not in self._counts:
            region = self.regions[name]
            rows = _pool_matrix(hw[0], self.grid[0], region.device)
            cols = _pool_matrix(hw[1], self.grid[1], region.device)
            c = torch.einsum("ra,fab,cb->frc", rows, region, cols)
            self._counts[key] = c.reshape(c.shape[0], -1)
        return self._counts[key]


def _frame_mean(values: torch.Tensor, valid: torch.Tensor) -> Optional[torch.Tensor]:
    """Mean over the valid frames of a (F,) tensor; None when no frame is valid."""
    n = int(valid.sum())
    if n == 0:
        return None
    return (values * valid).sum() / n


def _region_mean(x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """x (C, F, P), counts (F, P) → weighted mean vectors (F, C) (rows of empty frames are 0)."""
    total = counts.sum(dim=1).clamp_min(1.0)
    return torch.einsum("cfp,fp->fc", x, counts) / total[:, None]


def _pixel_cos_mean(e: torch.Tensor, r: torch.Tensor, counts: torch.Tensor, affine: bool) -> torch.Tensor:
    cos = F.cosine_similarity(e, r, dim=0, eps=1e-8)  # (F, P)
    if affine:
        cos = (1 + cos) / 2
    return (cos * counts).sum(dim=1) / counts.sum(dim=1).clamp_min(1.0)


def guidance_energies(edit_feats: Sequence[torch.Tensor], rec_feats: Sequence[torch.Tensor], masks: GuidanceMasks,
                      weights: GuidanceWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_fg, L_bg) from the estimator features (1, C, F, h, w) of the edit and the reconstruction."""
    zero = edit_feats[0].new_zeros((), dtype=torch.float32)
    fg, content, rest = zero, [], []
    for level, (e5, r5) in enumerate(zip(edit_feats, rec_feats)):
        hw = tuple(e5.shape[-2:])
        e = e5[0].float().flatten(2)  # (C, F, P)
        r = r5[0].float().flatten(2)
        scale = weights.loss_scale[level]
        c_t, c_s = masks.counts("target", hw), masks.counts("source", hw)
        c_b, c_o, c_g = masks.counts("body", hw), masks.counts("over", hw), masks.counts("minus", hw)
        valid_fg = (c_t.sum(1) > 0) & (c_s.sum(1) > 0)
        sim = _frame_mean(F.cosine_similarity(_region_mean(e, c_t), _region_mean(r, c_s), dim=1, eps=1e-8),
                          valid_fg.float())
        if sim is not None:
            fg = fg + scale * weights.w_fg / (1 + 4 * sim)
        valid_b = (c_b.sum(1) > 0).float()
        sim = _frame_mean(_pixel_cos_mean(e, r, c_b, affine=False), valid_b)
        content.append(None if sim is None else scale * weights.w_content / (1 + 4 * sim))
        sim = _frame_mean(_pixel_cos_mean(e, r, c_o, affine=True), (c_o.sum(1) > 0).float())
        contrast = None if sim is None else scale * weights.w_contrast * sim
        valid_i = ((c_b.sum(1) > 0) & (c_g.sum(1) > 0)).float()
        cos = F.cosine_similarity(_region_mean(e, c_b), _region_mean(r, c_g), dim=1, eps=1e-8)
        sim = _frame_mean((1 + cos) / 2, valid_i)
        inpaint = None if sim is None else weights.w_inpaint / (1 + 4 * sim)
        rest.extend([contrast, inpaint])
    bg = zero
    for term in content + rest:  # official accumulation order: content(0), content(1), contrast/inpaint per level
        if term is not None:
            bg = bg + term
    return fg, bg


def _input_gradients(energies: Sequence[torch.Tensor], x: torch.Tensor, scale: float) -> list[torch.Tensor]:
    """∂(scale·E_k)/∂x for each energy, from ONE backward pass when several need it.

    Two separate ``autograd.grad`` calls would each re-run the checkpointed estimator segments; one batched call
    (``is_grads_batched``: a vmapped backward over the stacked energies) recomputes them once.
    """
    live = [k for k, e in enumerate(energies) if e.requires_grad]
    grads = [torch.zeros_like(x) for _ in energies]
    if len(live) == 1:
        grads[live[0]] = torch.autograd.grad(scale * energies[live[0]], x)[0]
    elif live:
        stacked = scale * torch.stack([energies[k] for k in live])
        eye = torch.eye(len(live), dtype=stacked.dtype, device=stacked.device)
        batched = torch.autograd.grad(stacked, x, grad_outputs=eye, is_grads_batched=True)[0]
        for j, k in enumerate(live):
            grads[k] = batched[j]
    return grads


def score_guidance(features: Callable[[torch.Tensor, bool], Sequence[torch.Tensor]], x: torch.Tensor,
                   x_rec: torch.Tensor, masks: GuidanceMasks, weights: GuidanceWeights,
                   rec_feats: Optional[Sequence[torch.Tensor]] = None,
                   edit: Optional[tuple[torch.Tensor, Sequence[torch.Tensor]]] = None) -> torch.Tensor:
    """The guidance added to the v-prediction: 0.04·(∂(λL_fg)/∂x ⊙ T + ∂(λL_bg)/∂x ⊙ (1 − T)).

    ``features(latent, is_edit)`` runs the estimator's truncated forward with the edit's (target) or the
    reconstruction's (source) pose features. ``rec_feats``: the reference features of ``x_rec`` when the caller
    already has them (a weight-sharing estimator's reconstruction forward of the same step computed exactly these
    up-block activations); otherwise they are computed here. ``edit``: ``(x_leaf, features)``, the edit features
    of ``x`` with their autograd graph to the leaf ``x_leaf`` (a weight-sharing estimator's features are the
    conditional half of the same step's CFG forward, which then records them); otherwise computed here.
    """
    if rec_feats is None:
        with torch.no_grad():
            rec_feats = features(x_rec, False)
    rec = [f.detach() for f in rec_feats]
    with torch.enable_grad():
        if edit is None:
            xg = x.detach().requires_grad_(True)
            edit_feats = features(xg, True)
        else:
            xg, edit_feats = edit
        fg, bg = guidance_energies(edit_feats, rec, masks, weights)
        g_fg, g_bg = _input_gradients((fg, bg), xg, weights.energy_scale)
    t = masks.target_latent.to(x.dtype)
    return weights.factor * (g_fg * t + g_bg * (1 - t))
