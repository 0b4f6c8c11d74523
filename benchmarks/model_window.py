"""Time and memory of one edited window.

    python benchmarks/model_window.py --preset tiny --frames 8 --size 64 --steps 50
    python benchmarks/model_window.py --preset sd15 --frames 24 --size 512 --steps 50 --camera --dtype bf16

Prints: build time, time per window, per-phase call times (reconstruction/edit/replay forwards, guidance), peak
device memory (GPU) and peak host RSS (whole process), with random weights.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _status_gib(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def rss_gib() -> float:
    return _status_gib("VmRSS")


def peak_rss_gib() -> float:
    """VmHWM, this process's own high-water mark (``ru_maxrss`` can carry a forking parent's over ``exec``)."""
    return _status_gib("VmHWM")


def synthetic_window(frames: int, h: int, w: int):
    from mf_model import EditWindow
    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (frames, h, w, 3), dtype=np.uint8)
    ms = np.zeros((frames, h, w), np.uint8)
    mt = np.zeros((frames, h, w), np.uint8)
    ms[:, h // 4: 3 * h // 4, w // 5: w // 2] = 255
    mt[:, h // 4: 3 * h // 4, 2 * w // 5: 7 * w // 10] = 255
    pose = np.zeros((frames, h, w, 3), np.uint8)
    pose[:, h // 4: 3 * h // 4, w // 3] = (0, 85, 255)
    return EditWindow(src, pose, np.roll(pose, w // 5, axis=2), ms, mt, frame_indices=list(range(frames)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "sd15"])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", default="64", help="S or WxH (pixels)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--camera", action="store_true")
    ap.add_argument("--cfg", type=float, default=3.5)
    ap.add_argument("--dtype", default=None, help="fp32|fp16|bf16 (default: fp32 on CPU, fp16 on CUDA)")
    ap.add_argument("--device", default=None, help="cpu|cuda (default: cuda when available)")
    ap.add_argument("--estimator", default="shared", choices=["shared", "official"])
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    ap.add_argument("--windows", type=int, default=1, help="windows to edit (time is per window)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from pipelines.batch.config import ModelSpec

    use_gpu = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    spec = ModelSpec.for_gpus(1.0 if use_gpu else 0.0, preset=args.preset, dtype=args.dtype)
    device, dtype = spec.device, spec.dtype
    w, h = (int(v) for v in args.size.lower().split("x")) if "x" in args.size.lower() else (int(args.size),) * 2

    from mf_model import EditOptions, load_model

    print(f"config: preset={args.preset} frames={args.frames} size={w}x{h} steps={args.steps} camera={args.camera} "
          f"cfg={args.cfg} dtype={dtype} device={device} estimator={args.estimator} threads={args.threads}")
    t0 = time.perf_counter()
    model = load_model(preset_name=args.preset, dtype=dtype, device=device, estimator=args.estimator)
    build_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.synchronize()
        resident_dev = torch.cuda.memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    print(f"build_s: {build_s:.2f}")
    print(f"resident_host_rss_gib: {rss_gib():.2f}")
    if device == "cuda":
        print(f"resident_device_gib: {resident_dev:.2f}")
    win = synthetic_window(args.frames, h, w)
    opts = EditOptions(steps=args.steps, guidance_scale=args.cfg, camera=args.camera, seed=0)
    times, timings = [], {}
    for _ in range(args.windows):
        t0 = time.perf_counter()
        res = model.edit(win, opts)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        timings = res.info["timings"]
        assert res.frames.shape == (args.frames, h, w, 3)
    print(f"seconds_per_window: {np.mean(times):.2f}")
    print(f"seconds_per_frame: {np.mean(times) / args.frames:.3f}")
    for phase, vals in sorted(timings.items()):
        print(f"phase {phase}: calls={len(vals)} mean_s={np.mean(vals):.3f} total_s={np.sum(vals):.2f}")
    if device == "cuda":
        print(f"peak_device_allocated_gib: {torch.cuda.max_memory_allocated() / 2**30:.2f}")
        print(f"peak_device_reserved_gib: {torch.cuda.max_memory_reserved() / 2**30:.2f}")
    else:
        print(f"peak_rss_gib: {peak_rss_gib():.2f}")
    print(f"peak_host_rss_gib: {peak_rss_gib():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
