"""Resident and peak host memory of loading sd15-sized weights from the official release layout, on the CPU.

    python benchmarks/resident_official.py                 # writes a layout to a temporary folder (about 10 GB)
    python benchmarks/resident_official.py --dir /data/l   # keeps it there (reused when already written)

The official files are not on this machine, so the layout is written from seeded random weights at the official
sizes (``sd-image-variations-diffusers/{unet,image_encoder}``, ``sd-vae-ft-mse`` without its encoder,
``denoising_unet.pth``, ``motion_module.pth``, ``poctr.pth``). Then, each in a fresh process, it loads (a) that
layout with ``load_model(dir)``, (b) the ``sd15`` preset's random weights, and prints build time, resident RSS after
the build and peak RSS (fp32, CPU). Nothing here is tuned on any data.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def spatial_unet_config(u) -> dict:
    """An SD-1.x ``UNet2DConditionModel`` config.json for our :class:`UNetConfig` ``u``."""
    return {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": u.attention_head_dim,
            "block_out_channels": list(u.block_out_channels), "cross_attention_dim": u.cross_attention_dim,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "downsample_padding": u.downsample_padding, "flip_sin_to_cos": u.flip_sin_to_cos,
            "freq_shift": u.freq_shift, "in_channels": u.in_channels, "layers_per_block": u.layers_per_block,
            "norm_eps": u.norm_eps, "norm_num_groups": u.norm_num_groups, "out_channels": u.out_channels,
            "use_linear_projection": False, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}


def write_layout(root: str, preset: str = "sd15", seed: int = 0) -> None:
    """The official layout of ``preset``'s sizes from seeded random weights (the loader's coverage checks pass)."""
    import torch
    from safetensors.torch import save_file

    from mf_model.model import MotionFollower
    from mf_model.unet import UNet3DConditionModel

    model = MotionFollower.random(preset, seed=seed)
    unet = UNet3DConditionModel(model.config.unet)  # the files hold every key, the cross-attention q/k included
    missing, _ = unet.load_state_dict(model.unet.state_dict(), strict=False)
    assert all(k.endswith(("attn2.to_q.weight", "attn2.to_k.weight")) for k in missing), missing
    sd = {k: v.contiguous() for k, v in unet.state_dict().items()}
    del unet
    motion = {k: v for k, v in sd.items() if "motion_modules." in k}
    base = {k: v for k, v in sd.items() if k not in motion and not k.startswith("appearance_adapter.")}
    den = {k: v for k, v in sd.items() if k not in motion}
    iv = os.path.join(root, "sd-image-variations-diffusers")
    for sub in ("unet", "image_encoder"):
        os.makedirs(os.path.join(iv, sub), exist_ok=True)
    os.makedirs(os.path.join(root, "sd-vae-ft-mse"), exist_ok=True)
    with open(os.path.join(iv, "unet", "config.json"), "w") as fh:
        json.dump(spatial_unet_config(model.config.unet), fh)
    save_file(base, os.path.join(iv, "unet", "diffusion_pytorch_model.safetensors"))
    torch.save(motion, os.path.join(root, "motion_module.pth"))
    torch.save(den, os.path.join(root, "denoising_unet.pth"))
    del sd, motion, base, den
    torch.save(model.pose_guider.state_dict(), os.path.join(root, "poctr.pth"))
    with open(os.path.join(iv, "image_encoder", "config.json"), "w") as fh:
        json.dump({**model.config.image_encoder, "model_type": "clip_vision_model"}, fh)
    save_file({k: v.contiguous() for k, v in model.image_encoder.state_dict().items()},
              os.path.join(iv, "image_encoder", "model.safetensors"))
    with open(os.path.join(root, "sd-vae-ft-mse", "config.json"), "w") as fh:
        json.dump({"_class_name": "AutoencoderKL", **model.config.vae}, fh)
    save_file({k: v.contiguous() for k, v in model.vae.state_dict().items()},
              os.path.join(root, "sd-vae-ft-mse", "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(root, "WRITTEN"), "w") as fh:
        fh.write(f"{preset} seed {seed}\n")


def inner(weights: str | None, preset: str) -> int:
    sys.path.insert(0, REPO)
    sys.path.insert(1, HERE)
    import torch

    torch.set_num_threads(1)
    from model_window import peak_rss_gib, rss_gib

    from mf_model import load_model

    start = rss_gib()
    t0 = time.perf_counter()
    model = load_model(weights, preset_name=preset, dtype="fp32", device="cpu")
    row = {"build_s": time.perf_counter() - t0, "start_gib": start, "resident_gib": rss_gib(),
           "peak_gib": peak_rss_gib(), "params_gib": sum(
               t.numel() * t.element_size() for m in model.modules() for t in (*m.parameters(), *m.buffers())) / 2**30}
    if model.coverage is not None:
        assert model.coverage.ok, model.coverage.text()
    print("ROW " + json.dumps(row), flush=True)
    return 0


def measure(weights: str | None, preset: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--inner", "--preset", preset] + (
        ["--weights", weights] if weights else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = [ln[4:] for ln in out.stdout.splitlines() if ln.startswith("ROW ")]
    if out.returncode != 0 or not rows:
        what = weights or f"the {preset} preset"
        raise SystemExit(f"load of {what} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(rows[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where the layout is written (kept; reused when complete)")
    ap.add_argument("--preset", default="sd15", choices=["sd15", "tiny"], help="sizes (tiny: a quick check)")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inner:
        return inner(args.weights, args.preset)
    sys.path.insert(0, REPO)
    root = args.dir or tempfile.mkdtemp(prefix="mf-official-")
    try:
        if not os.path.exists(os.path.join(root, "WRITTEN")):
            t0 = time.perf_counter()
            write_layout(root, args.preset)
            print(f"wrote the {args.preset} official layout to {root} in {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"{'weights':<26} {'build_s':>8} {'start_gib':>10} {'resident_gib':>13} {'params_gib':>11} "
              f"{'peak_gib':>9}", flush=True)
        for name, weights in (("official layout (files)", root), (f"{args.preset} preset (random)", None)):
            r = measure(weights, args.preset)
            print(f"{name:<26} {r['build_s']:>8.1f} {r['start_gib']:>10.2f} {r['resident_gib']:>13.2f} "
                  f"{r['params_gib']:>11.2f} {r['peak_gib']:>9.2f}", flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
