"""Per-call GPU time of each sampler phase, and what a few standard speed settings change (one GPU run).

    python benchmarks/gpu_phases.py                      # on the GPU machine: sd15, fp16, 512², 24 frames
    python benchmarks/gpu_phases.py --device cpu --preset tiny --size 64 --frames 4 --dtype fp32   # smoke test

Random weights, no downloads. Each setting is applied on top of the ones before it (cumulative), on one model:
``baseline`` (the product's defaults), ``cudnn_benchmark`` (cuDNN picks its convolution algorithm per shape),
``sdpa_cudnn`` (cuDNN's fused attention first). For each it edits one window with ``--steps`` steps (the step plan
scaled: guidance, CFG and the reconstruction all run) after a warm-up, and prints the median seconds per call of each
phase, the window's seconds and the MAC-derived TFLOP/s of the three UNet phases. ``--profile`` adds the top CUDA
kernels of one baseline window. Nothing here is tuned on any data; figures depend on the GPU and its software.

Not measurable here: NHWC convolutions (channels_last) fail in the guidance's batched gradients ("NYI: querying
is_contiguous inside of vmap"); ``torch.compile`` of the UNet blocks took 8 minutes on the CPU and then failed on a
dynamic shape.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

_KEEP: list = []
PHASES = ("reconstruction_forward", "edit_forward", "guidance", "replay_forward")


def _phase_macs(preset_name: str, frames: int, size: int, cache: str | None) -> dict:
    from benchmarks import _gpu_suite as suite
    suite._load_cache(cache)
    c = suite.call_macs(preset_name, frames, size)
    return {"reconstruction_forward": c["full_b1"], "edit_forward": c["full_b2"],
            "guidance": c["trunc"] + c["bwd_ours"], "replay_forward": c["full_b1"]}


def _apply(model, knob: str) -> None:
    if knob == "cudnn_benchmark":
        torch.backends.cudnn.benchmark = True
    elif knob == "channels_last":
        for m in model.unet.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.to(memory_format=torch.channels_last)
    elif knob == "sdpa_cudnn":  # cuDNN's fused attention for every scaled_dot_product_attention from here on
        from torch.nn.attention import SDPBackend, sdpa_kernel
        _KEEP.append(sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                  SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH], set_priority=True))
        _KEEP[-1].__enter__()


def _window(model, frames: int, size: int, steps: int):
    from benchmarks.model_window import synthetic_window
    from mf_model import EditOptions
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = model.edit(synthetic_window(frames, size, size), EditOptions(steps=steps, seed=0, camera=False))
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, res.info["timings"]


def _row(knob: str, sec: float, timings: dict, macs: dict, warm_s: float) -> str:
    parts = [f"{knob:<16} window {sec:7.2f} s (warm-up {warm_s:6.1f} s)"]
    for p in PHASES:
        if timings.get(p):
            med = statistics.median(timings[p])
            parts.append(f"{p} {med:.3f} s x{len(timings[p])} = {2 * macs[p] / med / 1e12:.0f} TFLOP/s")
    return " | ".join(parts)


def _profile(model, frames: int, size: int) -> None:
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        _window(model, frames, size, 2)
    key = "self_cuda_time_total" if model.device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="sd15")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5, help="5: 5 reconstruction and CFG calls, 2 guidance calls")
    ap.add_argument("--knobs", nargs="*", default=["baseline", "cudnn_benchmark", "sdpa_cudnn"])
    ap.add_argument("--budget-s", type=float, default=300.0, help="start no new setting after this many seconds")
    ap.add_argument("--macs-cache", default=None)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    from mf_model import load_model
    t_start = time.perf_counter()
    macs = _phase_macs(args.preset, args.frames, args.size, args.macs_cache)
    model = load_model(preset_name=args.preset, dtype=args.dtype, device=args.device)
    print(f"phases: preset={args.preset} {args.dtype} {args.device} {args.size}² frames={args.frames} "
          f"steps={args.steps} torch {torch.__version__}", flush=True)
    for knob in args.knobs:
        if time.perf_counter() - t_start > args.budget_s:
            print(f"{knob:<16} skipped (budget {args.budget_s:.0f} s spent)", flush=True)
            continue
        try:
            _apply(model, knob)
            warm_s, _ = _window(model, args.frames, args.size, 2)
            sec, timings = _window(model, args.frames, args.size, args.steps)
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"{knob:<16} FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            continue
        print(_row(knob, sec, timings, macs, warm_s), flush=True)
        if knob == "baseline" and args.profile:
            _profile(model, args.frames, args.size)
    print(f"phases_seconds: {time.perf_counter() - t_start:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
