"""Group norm at the UNet's shapes: PyTorch's kernel against two formulations of the same function (one GPU run).

    python benchmarks/gpu_group_norm.py                 # on the GPU machine (fp16)
    python benchmarks/gpu_group_norm.py --device cpu --dtype fp32 --small   # smoke test

Methods: ``native`` (``F.group_norm``), ``layer_norm`` (``F.layer_norm`` over each group's elements, then the
per-channel affine as one ``addcmul``), ``fp32_stats`` (``var_mean`` of an fp32 copy, then one ``addcmul``). For each
shape (frames × channels × H × W; 32 groups) it prints the median time of a forward without gradients and of a
forward + backward to the input, and the largest error against an fp64 reference. Random data; nothing tuned.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = [(24, 320, 64, 64), (48, 320, 64, 64), (24, 640, 32, 32), (48, 1280, 16, 16), (24, 960, 32, 32)]
SMALL = [(2, 64, 16, 16), (4, 128, 8, 8)]
GROUPS = 32


def native(x, w, b, eps):
    return F.group_norm(x, GROUPS, w, b, eps)


def layer_norm(x, w, b, eps):
    n, c = x.shape[:2]
    y = F.layer_norm(x.reshape(n * GROUPS, -1), (x[0].numel() // GROUPS,), eps=eps).view_as(x)
    shape = (1, c) + (1,) * (x.dim() - 2)
    return torch.addcmul(b.view(shape), y, w.view(shape))


def fp32_stats(x, w, b, eps):
    n, c = x.shape[:2]
    var, mean = torch.var_mean(x.reshape(n, GROUPS, -1).float(), dim=-1, unbiased=False)
    rstd = torch.rsqrt(var + eps)
    scale = rstd.repeat_interleave(c // GROUPS, dim=1) * w.float()
    shift = b.float() - mean.repeat_interleave(c // GROUPS, dim=1) * scale
    shape = (n, c) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))


METHODS = {"native": native, "layer_norm": layer_norm, "fp32_stats": fp32_stats}


def _time(fn, device: str, reps: int) -> float:
    times = []
    for i in range(reps + 3):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(name: str, fn, x, w, b, ref, device: str, reps: int) -> str:
    with torch.no_grad():
        err = (fn(x, w, b, 1e-6).double() - ref).abs().max().item()
        fwd = _time(lambda: fn(x, w, b, 1e-6), device, reps)
    xg = x.detach().requires_grad_(True)
    g = torch.randn_like(x)
    both = _time(lambda: torch.autograd.grad(fn(xg, w, b, 1e-6), xg, g), device, reps)
    return f"{name} fwd {fwd * 1e6:8.1f} fwd+bwd {both * 1e6:8.1f} err {err:.2e}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    gen = torch.Generator(device=args.device).manual_seed(0)
    print(f"group_norm: {args.device} {args.dtype} groups={GROUPS}; median µs of {args.reps}", flush=True)
    for shape in SMALL if args.small else SHAPES:
        x = (torch.randn(shape, generator=gen, device=args.device) * 3 + 1).to(dtype)
        w = (torch.rand(shape[1], generator=gen, device=args.device) + 0.5).to(dtype)
        b = torch.randn(shape[1], generator=gen, device=args.device).to(dtype)
        ref = F.group_norm(x.double(), GROUPS, w.double(), b.double(), 1e-6)
        parts = [_measure(name, fn, x, w, b, ref, args.device, args.reps) for name, fn in METHODS.items()]
        print(f"{str(shape):<20} " + " | ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
