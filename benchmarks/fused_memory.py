"""Memory of a request in crossfade and in fused mode: measured (tiny preset, small size) next to the formula of
``mf_model.fused_memory``, and the formula's figures for 2- and 10-minute requests at 512² (sd15, fp16).

    python benchmarks/fused_memory.py [--size 128] [--short 40] [--long 264] [--group 8] [--steps 1]

Each (mode, length) runs in its own process, so ``ru_maxrss`` is that request's peak. Columns: ``peak-base`` = peak
RSS minus the RSS after the model was loaded; ``state`` = the exact bytes of every live window state (conditions,
guidance masks, latents; ``mf_model.fused_memory.state_bytes``) after the first step, the most windows at once;
``formula`` = ``G_eff·window·b`` for that state; ``pred1`` / ``pred2`` = the measured peak of a one-window run /
of the same request in crossfade mode, plus the formula's fused extra ``(G_eff - 1)·window·(b + host_frame)`` (on
the CPU the device is the host). With CUDA
(``--device cuda``) the device peak (``max_memory_allocated`` minus the weights) is measured too.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("crossfade", "fused")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> dict:
    import torch

    from benchmarks._fused_common import edit_request
    from mf_model import EditOptions, load_model
    from mf_model.fused_memory import state_bytes
    from mf_model.sampler import TwoBranchSampler

    torch.set_num_threads(1)
    cuda = args.device == "cuda"
    model = load_model(preset_name=args.preset, device=args.device, dtype="fp16" if cuda else "fp32")
    live: list = []
    peak_state = [0]
    start, step = TwoBranchSampler.start, TwoBranchSampler.step

    def spy_start(self, c, noise):
        state = start(self, c, noise)
        live.append(weakref.ref(state))
        return state

    def spy_step(self, state):
        out = step(self, state)
        if state.i == 1:  # region counts exist after the first (guidance) step
            peak_state[0] = max(peak_state[0], sum(state_bytes(s()) for s in live if s() is not None))
        return out

    TwoBranchSampler.start, TwoBranchSampler.step = spy_start, spy_step
    base = _rss()
    dev_base = torch.cuda.memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    opts = EditOptions(steps=args.steps, seed=1)
    n = sum(1 for _ in edit_request(model, args.mode, args.frames, args.size, args.window, args.overlap, opts,
                                    args.group))
    out = {"windows": n, "base": base, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "state": peak_state[0], "elsize": model.dtype.itemsize}
    if cuda:
        out["device_peak"] = torch.cuda.max_memory_allocated() - dev_base
    return out


def _run(args, mode: str, frames: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--frames", str(frames)] + [
        f"--{k}={getattr(args, k)}" for k in ("size", "window", "overlap", "group", "steps", "preset", "device")]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _mib(b: float) -> str:
    return f"{b / 2**20:9.1f}"


def measure(args) -> None:
    from mf_model.config import preset
    from mf_model.fused_memory import fused_memory
    cfg = preset(args.preset)
    size = (args.size, args.size)
    cuda = args.device == "cuda"
    print(f"== measured: {args.preset}, {args.size}², window {args.window}, overlap {args.overlap}, group "
          f"{args.group}, {args.steps} steps, {args.device} (MiB) ==")
    ref = _run(args, "crossfade", args.window)  # one window: the working set both modes share
    print(f"one window ({args.window} frames): peak-base {_mib(ref['peak'] - ref['base']).strip()}, state "
          f"{_mib(ref['state']).strip()}" + (f", device peak {_mib(ref['device_peak']).strip()}" if cuda else ""))
    print(f"{'mode':<10}{'frames':>7}{'windows':>8}{'groups':>7}{'G_eff':>6}{'peak-base':>10}{'state':>10}"
          f"{'formula':>10}{'pred1':>10}{'pred2':>10}" + (f"{'dev peak':>10}{'dev pred':>10}" if cuda else ""))
    for frames in (args.short, args.long):
        runs = {mode: _run(args, mode, frames) for mode in MODES}
        for mode in MODES:
            r = runs[mode]
            mem = fused_memory(cfg, frames, size, args.window, args.overlap, args.group, r["elsize"])
            win = min(args.window, frames)
            g = mem.group_windows if mode == "fused" else 1
            formula = g * win * mem.device_per_frame
            extra = (g - 1) * win * (mem.device_per_frame + (0 if cuda else mem.host_per_frame))
            pred1 = ref["peak"] - ref["base"] + extra
            pred2 = runs["crossfade"]["peak"] - runs["crossfade"]["base"] + extra
            line = (f"{mode:<10}{frames:>7}{r['windows']:>8}{mem.groups if mode == 'fused' else r['windows']:>7}"
                    f"{g:>6}{_mib(r['peak'] - r['base'])} {_mib(r['state'])} {_mib(formula)} {_mib(pred1)}"
                    f" {_mib(pred2)}")
            if cuda:
                line += f" {_mib(r['device_peak'])} {_mib(ref['device_peak'] + (g - 1) * win * mem.device_per_frame)}"
            print(line, flush=True)
    print("pred1 = the one-window peak + (G_eff - 1)·window·(b + host_frame); pred2 = the same request's crossfade "
          "peak + the same extra. A run of several windows peaks above the one-window run by heap fragmentation "
          "(glibc, freed blocks kept within phases: mf_model.host_memory), which the formula does not model")


def extrapolate(args) -> None:
    from mf_model.config import preset
    from mf_model.fused_memory import fused_memory, state_bytes_per_frame
    cfg = preset("sd15")
    size = (512, 512)
    b = state_bytes_per_frame(cfg, size, 2)
    print(f"\n== sd15 512² fp16, {args.fps:g} fps, window {args.window}, overlap {args.overlap}, group {args.group}: "
          "formula, not measured ==")
    print(f"b(512²) = {b['total'] / 2**20:.2f} MiB per window frame on the device (conditions "
          f"{b['cond'] / 2**20:.2f}, guidance masks {b['guide'] / 2**20:.2f}, latents {b['lat'] / 2**20:.3f})")
    print(f"{'request':<10}{'frames':>7}{'windows':>8}{'groups':>7}{'G_eff':>6}{'dev state GiB':>14}"
          f"{'dev extra GiB':>14}{'host i/o GiB':>13}{'crossfade dev state GiB':>24}")
    for label, seconds in (("2 min", 120), ("10 min", 600)):
        frames = int(seconds * args.fps)
        m = fused_memory(cfg, frames, size, args.window, args.overlap, args.group, 2)
        print(f"{label:<10}{frames:>7}{m.windows:>8}{m.groups:>7}{m.group_windows:>6}{m.device_state / 2**30:>14.2f}"
              f"{m.device_extra / 2**30:>14.2f}{m.host_io / 2**30:>13.2f}"
              f"{args.window * m.device_per_frame / 2**30:>24.2f}")
    print("(plus, in both modes, the weights and one window step's working set — UNet activations, the guidance "
          "graph, camera K/V — which the fused mode does not change: one window is stepped at a time)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--window", type=int, default=24)
    ap.add_argument("--overlap", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--short", type=int, default=40)
    ap.add_argument("--long", type=int, default=264)
    ap.add_argument("--fps", type=float, default=24.0)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", choices=MODES)
    ap.add_argument("--frames", type=int)
    args = ap.parse_args(argv)
    if args.child:
        args.mode = args.child
        print(json.dumps(child(args)))
        return 0
    measure(args)
    extrapolate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
