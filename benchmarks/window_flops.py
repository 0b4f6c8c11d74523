"""Exact multiply-accumulate count of one edited window, per phase, without a GPU (meta device).

    python benchmarks/window_flops.py                       # sd15, 512², 24 and 32 frames, 50 steps, cfg on
    python benchmarks/window_flops.py --steps 25 --frames 32  # the fast preset

One call of every phase is counted on the meta device (``benchmarks._flops``), then multiplied by how often the
step plan (``mf_model.schedule.StepPlan``) runs it. Columns: ``ours`` (this code, guidance without activation
checkpointing: the CPU default; the guidance's edit features are the CFG forward's conditional half, recorded
with their graph, except at camera steps whose CFG forward injects K/V), ``ours+ckpt`` (with it, what CUDA picks
when memory is short), ``before`` (the earliest code: reference features recomputed, checkpointing on, two
separate input-gradient calls, full one-token cross-attention) and ``official`` (the release as spec §9.1
describes it); both predate our frozen-weight autograd (``mf_model.frozen_grad``) and are counted without it.
``ours`` computes the one-token cross-attention as ``to_out(to_v(token))`` (exact: one key's softmax weight is 1);
``before`` and ``official`` are counted with the full attention (``full_cross_attention``).
Spec §9.1 estimates ≈3.7×10¹⁵ MAC per official window.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks._flops import count_macs  # noqa: E402

VARIANTS = ("ours", "ours+ckpt", "before", "official")


@dataclass
class PlanCounts:
    """How many calls of each kind a window's step plan makes."""

    steps: int
    rec: int
    cfg: int
    cfg_camera: int
    replays: int  # re-noise forwards we run (the official runs one more per replay step, unused)
    replay_steps: int
    guidance: int
    guidance_camera: int  # guidance calls at steps whose CFG forward injects the reconstruction's K/V (camera)


def plan_counts(steps: int) -> PlanCounts:
    from mf_model.schedule import StepPlan
    plan = StepPlan(steps)
    reps = [plan.replays(i) for i in range(steps)]
    return PlanCounts(steps=steps, rec=steps, cfg=sum(reps),
                      cfg_camera=sum(r for i, r in enumerate(reps) if plan.camera(i)),
                      replays=sum(r - 1 for r in reps), replay_steps=sum(1 for r in reps if r > 1),
                      guidance=sum(r for i, r in enumerate(reps) if plan.guidance(i)),
                      guidance_camera=sum(r for i, r in enumerate(reps) if plan.guidance(i) and plan.camera(i)))


class PhaseCounter:
    """MACs of one call of each phase for a preset (sd15 by default) at ``frames`` × ``size``²."""

    def __init__(self, frames: int, size: int, preset_name: str = "sd15"):
        from mf_model.config import preset
        from mf_model.cost import meta_inputs, meta_unet
        self.cfg = preset(preset_name)
        self.frames, self.size = frames, size
        self.latent = (1, 4, frames, size // 8, size // 8)
        self.unet = meta_unet(self.cfg.unet)
        self.x, self.clip, self.pose, self.app = meta_inputs(self.cfg.unet, self.latent)
        self.masks = torch.zeros(frames, 1, size, size, device="meta")

    def unet_call(self, batch: int, camera: bool = False) -> int:
        from mf_model.camera import KVBank, camera_mode
        u, x = self.unet, self.x.expand(batch, *self.x.shape[1:])
        clip = self.clip.repeat(batch, 1, 1)
        bank = KVBank(self.masks, self.masks) if camera else None
        with torch.no_grad():
            if bank is not None:
                with camera_mode(u.camera_hook, "save", bank):
                    u(self.x, 999, self.clip, self.pose, self.app)
            with camera_mode(u.camera_hook, "inject" if camera else None, bank):
                return count_macs(lambda: u(x, 999, clip, self.pose, self.app))

    def _truncated(self, latent):
        return self.unet(latent, 999, self.clip, self.pose, self.app, up_ft_indices=[1, 2])

    def truncated_forward(self) -> int:
        with torch.no_grad():
            return count_macs(lambda: self._truncated(self.x))

    def guidance_backward(self, mode: str) -> int:
        """MACs of a guidance call beyond its one edit-latent forward: backward(s) (+ recomputation). ``ours`` and
        ``ours+ckpt`` run our frozen-weight autograd (``mf_model.frozen_grad``: the GEGLU projection and the temporal
        attention recomputed in the backward); ``plain`` (the official) and ``before`` predate it, so they are
        counted with weights marked as requiring grad, which turns it off (``autograd.grad`` with respect to the
        latent still computes no weight gradient)."""
        from mf_model.guidance import _input_gradients
        self.unet.gradient_checkpointing = mode in ("ours+ckpt", "before")
        plain = mode in ("plain", "before")
        for p in self.unet.parameters():
            p.requires_grad_(plain)

        def run():
            with torch.enable_grad():
                xg = self.x.detach().requires_grad_(True)
                feats = self._truncated(xg)
                fg = sum((f * f).sum() for f in feats)  # stand-ins for the energies: same graph, negligible MACs
                bg = sum(f.sum() for f in feats)
                if mode == "before":
                    torch.autograd.grad(fg, xg, retain_graph=True)
                    torch.autograd.grad(bg, xg)
                else:
                    _input_gradients((fg, bg), xg, 1.0)
        try:
            return count_macs(run) - self.truncated_forward()
        finally:
            self.unet.gradient_checkpointing = False
            for p in self.unet.parameters():
                p.requires_grad_(False)

    def vae_decode_frame(self) -> int:
        from mf_model.vae_decoder import VaeDecoder
        with torch.device("meta"):
            vae = VaeDecoder(self.cfg.vae)
        z = torch.empty(1, 4, self.size // 8, self.size // 8, device="meta")
        with torch.no_grad():
            return count_macs(lambda: vae.decode(z))

    def clip_frames(self) -> int:
        from mf_model.image_encoder import ClipImageEncoder
        with torch.device("meta"):
            clip = ClipImageEncoder(self.cfg.image_encoder)
        side = clip.config.image_size
        px = torch.empty(self.frames, 3, side, side, device="meta")
        with torch.no_grad():
            return count_macs(lambda: clip(px))

    def controllers(self) -> tuple[int, int]:
        """(PoCtr on one pose sequence, ReCtr on the source frames)."""
        from mf_model.controllers import AppearanceAdapter, PoseGuider
        with torch.device("meta"):
            pg = PoseGuider(**vars(self.cfg.pose_guider))
            rc = AppearanceAdapter(tuple(self.cfg.unet.block_out_channels))
        img = torch.empty(self.frames, 3, self.size, self.size, device="meta")
        with torch.no_grad():
            return count_macs(lambda: pg(img)), count_macs(lambda: rc(img))


@contextlib.contextmanager
def full_cross_attention():
    """Count one-token cross-attention as the official code computes it: to_q, to_k, scores, softmax, to_out per
    position (our Attention takes a shortcut that gives the same result)."""
    import torch.nn.functional as F

    from mf_model.layers import Attention

    plain = Attention.forward

    def forward(self, x, context=None, spatial=None):
        if context is None or context.shape[1] != 1:
            return plain(self, x, context, spatial)
        b, n, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        inner = q.shape[-1]
        d = inner // self.heads
        q, k, v = (t.view(b, t.shape[1], self.heads, d).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, inner)
        return self.to_out[1](self.to_out[0](out))

    Attention.forward = forward
    try:
        yield
    finally:
        Attention.forward = plain


def one_calls(pc: PhaseCounter) -> dict:
    pocrt, rectr = pc.controllers()
    return {"full_b1": pc.unet_call(1), "full_b2": pc.unet_call(2), "full_b2_cam": pc.unet_call(2, camera=True),
            "trunc": pc.truncated_forward(), "bwd_ours": pc.guidance_backward("ours"),
            "bwd_ckpt": pc.guidance_backward("ours+ckpt"), "bwd_plain": pc.guidance_backward("plain"),
            "bwd_before": pc.guidance_backward("before"),
            "vae": pc.vae_decode_frame(), "clip": pc.clip_frames(), "poctr": pocrt, "rectr": rectr}


def phase_table(c: dict, n: PlanCounts, frames: int, camera: bool, variant: str) -> dict:
    """MAC per phase of one window for ``variant``."""
    official = variant == "official"
    cam = n.cfg_camera if camera else 0
    # ours: the edit features come from the CFG forward's conditional half (its graph recorded), except where
    # camera mode injects K/V into that forward; the reconstruction features from the reconstruction forward
    own_fwd = (n.guidance_camera if camera else 0) if variant in ("ours", "ours+ckpt") else n.guidance
    calls_fwd = own_fwd * c["trunc"] + (0 if variant in ("ours", "ours+ckpt") else n.guidance * c["trunc"])
    g_bwd = {"ours": c["bwd_ours"], "ours+ckpt": c["bwd_ckpt"], "before": c["bwd_before"],
             "official": c["bwd_plain"]}[variant]
    replays = n.replays + (n.replay_steps if official else 0)
    unet_calls = n.rec + n.cfg + replays + (2 * n.guidance if official else 0)
    return {
        "reconstruction": n.rec * c["full_b1"],
        "editing CFG": (n.cfg - cam) * c["full_b2"] + cam * c["full_b2_cam"],
        "replays": replays * c["full_b1"],
        "guidance forwards": calls_fwd,
        "guidance backwards": n.guidance * g_bwd,
        "VAE decode": (2 if official else 1) * frames * c["vae"],
        "CLIP": (2 if official else 1) * c["clip"],
        "controllers": 2 * c["poctr"] + (unet_calls if official else 1) * c["rectr"],
    }


def report(frames: int, size: int, steps: int, overlaps: dict) -> dict:
    pc = PhaseCounter(frames, size)
    c = one_calls(pc)
    with full_cross_attention():
        cf = one_calls(pc)
    n = plan_counts(steps)
    print(f"\n== sd15 {size}x{size}, {frames} frames, {steps} steps, cfg on ==")
    print(f"plan: {n}")
    print("one call (GMAC): " + ", ".join(f"{k}={v / 1e9:.1f}" for k, v in c.items()))
    print("one call, full cross-attention (GMAC): " + ", ".join(f"{k}={v / 1e9:.1f}" for k, v in cf.items()))
    print(f"per frame per UNet forward: {cf['full_b1'] / frames / 1e9:.1f} GMAC with full cross-attention (spec "
          f"§9.1: ≈567), {c['full_b1'] / frames / 1e9:.1f} ours; truncated {cf['trunc'] / frames / 1e9:.1f} (spec "
          f"≈436), {c['trunc'] / frames / 1e9:.1f} ours; ReCtr {c['rectr'] / frames / 1e9:.1f} (spec ≈30)")
    totals = {}
    for camera in (False, True):
        tables = {v: phase_table(c if v.startswith("ours") else cf, n, frames, camera, v) for v in VARIANTS}
        print(f"\n-- camera {'on' if camera else 'off'} (PMAC = 1e15 MAC) --")
        print(f"{'phase':<20}" + "".join(f"{v:>12}" for v in VARIANTS))
        for phase in tables["ours"]:
            print(f"{phase:<20}" + "".join(f"{tables[v][phase] / 1e15:>12.4f}" for v in VARIANTS))
        tot = {v: sum(t.values()) for v, t in tables.items()}
        print(f"{'total':<20}" + "".join(f"{tot[v] / 1e15:>12.4f}" for v in VARIANTS))
        new = frames - overlaps.get(frames, 0)
        print(f"{f'per new frame ({frames}/{frames - new})':<20}" + "".join(
            f"{tot[v] / new / 1e12:>11.1f}T" for v in VARIANTS))
        totals[camera] = tot
    g = {k: c[k] / 1e9 for k in ("bwd_ours", "bwd_ckpt")}
    before = (2 * cf["trunc"] + cf["bwd_before"]) / 1e9
    print(f"\nguidance call (GMAC; ours: its edit forward is the CFG forward's, and with camera K/V injected "
          f"+{c['trunc'] / 1e9:.0f}): without checkpointing {g['bwd_ours']:.0f}, with {g['bwd_ckpt']:.0f}, "
          f"before {before:.0f}, official {(2 * cf['trunc'] + cf['bwd_plain']) / 1e9:.0f}")
    return {"calls": c, "plan": n, "totals": totals}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--frames", type=int, nargs="*", default=[24, 32])
    ap.add_argument("--overlap", type=int, default=8)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for f in args.frames:
        report(f, args.size, args.steps, {f: args.overlap})
    return 0


if __name__ == "__main__":
    sys.exit(main())
