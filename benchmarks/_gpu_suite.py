"""Every GPU figure in one run (driven by ``benchmarks/gpu_suite.sh``): per-window time and peak device memory of
sd15 at 512² for 8 and 24 frames, fp16 and bf16, camera off and on; GPU-seconds per new output frame (window 24,
overlap 8); achieved TFLOP/s from the exact MAC count of the same work (``benchmarks/window_flops.py``).

``--dry-run`` sends the tiny preset through the same code on the CPU (small size, few steps).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

_CALLS: dict = {}
_CACHE: dict = {"path": None}


def _load_cache(path: str | None) -> None:
    """MAC counts of earlier runs (the count is exact and device-independent: counting it on the CPU beforehand
    saves the GPU machine's time)."""
    _CACHE["path"] = path
    if path and os.path.exists(path):
        with open(path) as fh:
            _CALLS.update({tuple(json.loads(k)): v for k, v in json.load(fh).items()})


def _save_cache() -> None:
    if _CACHE["path"]:
        with open(_CACHE["path"], "w") as fh:
            json.dump({json.dumps(list(k)): v for k, v in _CALLS.items()}, fh)


def call_macs(preset_name: str, frames: int, size: int) -> dict:
    """MACs of one call of each phase (``window_flops.one_calls``), from the cache or counted and cached."""
    from benchmarks.window_flops import PhaseCounter, one_calls
    key = (preset_name, frames, size)
    if key not in _CALLS:
        _CALLS[key] = one_calls(PhaseCounter(frames, size, preset_name))
        _save_cache()
    return _CALLS[key]


def window_macs(preset_name: str, frames: int, size: int, steps: int, camera: bool, checkpointing: bool) -> int:
    from benchmarks.window_flops import phase_table, plan_counts
    calls = call_macs(preset_name, frames, size)
    table = phase_table(calls, plan_counts(steps), frames, camera, "ours+ckpt" if checkpointing else "ours")
    return sum(table.values())


def run_config(model, preset_name: str, frames: int, size: int, steps: int, camera: bool, overlap: int) -> dict:
    from benchmarks.model_window import synthetic_window
    from mf_model import EditOptions
    cuda = model.device.type == "cuda"
    win = synthetic_window(frames, size, size)
    opts = EditOptions(steps=steps, camera=camera, seed=0)
    ckpt = model.sampler(opts).use_checkpointing((1, 4, frames, size // 8, size // 8))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model.edit(win, opts)
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        from benchmarks.model_window import peak_rss_gib
        peak = peak_rss_gib()
    macs = window_macs(preset_name, frames, size, steps, camera, ckpt)
    new = frames - overlap if frames > overlap else frames  # a window no longer than the overlap: all its frames
    return {"frames": frames, "camera": camera, "checkpointing": ckpt, "seconds": sec, "peak_gib": peak,
            "gpu_s_per_new_frame": sec / new, "new_frames": new, "tflops": 2 * macs / sec / 1e12, "tmac": macs / 1e12}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny preset on the CPU through the same code")
    ap.add_argument("--dtypes", nargs="*", default=None)
    ap.add_argument("--frames", type=int, nargs="*", default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--overlap", type=int, default=None, help="window overlap (default 8; dry run 1)")
    ap.add_argument("--camera", choices=["off", "on", "both"], default="both")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no new window after this many seconds")
    ap.add_argument("--macs-cache", default=None, help="JSON file of MAC counts to read and extend")
    ap.add_argument("--count-only", action="store_true", help="only count the MACs into --macs-cache (CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dry = args.dry_run
    if not dry and not args.count_only and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device (use --dry-run to test the suite on the CPU)")
        return 2
    preset_name, device = ("tiny", "cpu") if dry else ("sd15", "cuda")
    dtypes = args.dtypes or (["fp32"] if dry else ["fp16", "bf16"])
    frames = args.frames or ([2, 4] if dry else [8, 24])
    size = args.size or (64 if dry else 512)
    steps = args.steps or (6 if dry else 50)
    overlap = args.overlap if args.overlap is not None else (1 if dry else 8)
    _load_cache(args.macs_cache)
    if args.count_only:
        for f in frames:
            call_macs(preset_name, f, size)
        print(f"counted: {sorted(_CALLS)} -> {args.macs_cache}")
        return 0
    print(f"suite: preset={preset_name} device={device} size={size} steps={steps} frames={frames} dtypes={dtypes}")
    if not dry:
        print(f"device: {torch.cuda.get_device_name(0)}  torch {torch.__version__}")
    suite_t0 = time.perf_counter()
    failures = 0
    for dt in dtypes:
        if time.perf_counter() - suite_t0 > args.budget_s:
            print(f"dtype {dt}: skipped (suite budget {args.budget_s:.0f} s spent)")
            continue
        try:
            model = _warm_model(preset_name, dt, device, min(frames), size)
        except Exception as exc:  # noqa: BLE001 - report and go on to the next dtype
            print(f"dtype {dt}: FAILED to load or warm up: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            failures += 1
            continue
        for f in frames:
            for camera in {"off": (False,), "on": (True,), "both": (False, True)}[args.camera]:
                failures += _one(model, dt, preset_name, f, size, steps, camera, overlap, device,
                                 args.budget_s - (time.perf_counter() - suite_t0))
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"suite_seconds: {time.perf_counter() - suite_t0:.1f}")
    return 1 if failures else 0


def _warm_model(preset_name: str, dt: str, device: str, frames: int, size: int):
    from benchmarks.model_window import synthetic_window
    from mf_model import EditOptions, load_model
    model = load_model(preset_name=preset_name, dtype=dt, device=device)
    model.edit(synthetic_window(frames, size, size), EditOptions(steps=2, seed=0))
    return model


def _one(model, dt, preset_name, f, size, steps, camera, overlap, device, left_s: float) -> int:
    """One configuration's line; a failure (out of memory, say) is printed and the suite goes on."""
    label = f"window {dt} frames={f} camera={'on' if camera else 'off'}"
    if left_s <= 0:
        print(f"{label}: skipped (suite budget spent)", flush=True)
        return 0
    try:
        r = run_config(model, preset_name, f, size, steps, camera, overlap)
    except Exception as exc:  # noqa: BLE001 - report and go on to the next configuration
        print(f"{label}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
        return 1
    where = "device" if device == "cuda" else "host RSS"
    print(f"{label} ckpt={r['checkpointing']}: {r['seconds']:.2f} s, peak {where} {r['peak_gib']:.2f} GiB, "
          f"{r['gpu_s_per_new_frame']:.3f} GPU-s per new frame ({r['new_frames']} new), "
          f"{r['tmac']:.3f} TMAC, {r['tflops']:.3f} TFLOP/s achieved", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
