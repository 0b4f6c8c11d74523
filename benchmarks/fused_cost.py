"""Cost of the fused mode against the crossfade mode: MACs per new frame (counted on the meta device with
``benchmarks/window_flops.py``'s counters) and wall time per request (CPU, tiny preset), plus the seam metric of
both modes on the same input.

    python benchmarks/fused_cost.py                        # sd15 512² MACs; tiny 64² wall time, 136 frames
    python benchmarks/fused_cost.py --frames 72 --steps 4 --mac-size 512 --mac-frames 2880

Both modes denoise the same windows with the same step plan, so their MACs are equal up to the fuse: one
multiply-add per latent element of every shared frame of every window, per step and branch (elementwise, far below
one UNet call). Wall time: crossfade edits the windows one by one (as one actor would), fused group by group
(``mf_model.fusion_plan.fusion_groups``); the windows' stitching is the pipeline's crossfade in both (within a
fused group the shared frames are already equal). The seam score (``pipelines.windows.stitch.SeamMeter``) is not
a quality figure with random weights.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._fused_common import edit_request, spans  # noqa: E402
from benchmarks.window_flops import PhaseCounter, phase_table, plan_counts  # noqa: E402


def fuse_macs(frames: int, size: int, window: int, overlap: int, steps: int) -> int:
    """Multiply-adds of the fuse over a request: steps × 2 branches × Σ_k shared frames of window k × 4·h·w."""
    from mf_model.fused import LatentFuser
    fuser = LatentFuser(spans(frames, window, overlap))
    shared = sum(len(fuser.normalised_weights(k)) for k in range(len(fuser.spans)))
    return steps * 2 * shared * 4 * (size // 8) ** 2


def window_macs(preset_name: str, frames: int, size: int, steps: int) -> dict[bool, int]:
    """MACs of one window (``ours``, without checkpointing), camera off and on: the counts ``one_calls`` makes for
    that variant only."""
    pc = PhaseCounter(frames, size, preset_name)
    poctr, rectr = pc.controllers()
    calls = {"full_b1": pc.unet_call(1), "full_b2": pc.unet_call(2), "full_b2_cam": pc.unet_call(2, camera=True),
             "trunc": pc.truncated_forward(), "bwd_ours": pc.guidance_backward("ours"), "vae": pc.vae_decode_frame(),
             "clip": pc.clip_frames(), "poctr": poctr, "rectr": rectr,
             "bwd_ckpt": 0, "bwd_before": 0, "bwd_plain": 0}  # other variants: not counted here
    plan = plan_counts(steps)
    return {cam: int(sum(phase_table(calls, plan, frames, cam, "ours").values())) for cam in (False, True)}


def macs_report(preset_name: str, size: int, frames: int, window: int, overlap: int, steps: int) -> None:
    n = len(spans(frames, window, overlap))
    print(f"\n== MACs: {preset_name} {size}², request of {frames} frames = {n} windows of {window} (overlap "
          f"{overlap}), {steps} steps, cfg on ==")
    print(f"{'camera':<8}{'window GMAC':>14}{'crossfade GMAC/frame':>22}{'fused GMAC/frame':>18}{'fuse share':>12}")
    per_window = window_macs(preset_name, window, size, steps)
    for camera in (False, True):
        w = per_window[camera]
        cross = n * w
        fused = cross + fuse_macs(frames, size, window, overlap, steps)
        print(f"{'on' if camera else 'off':<8}{w / 1e9:>14.1f}{cross / frames / 1e9:>22.2f}"
              f"{fused / frames / 1e9:>18.2f}{(fused - cross) / cross:>12.1e}", flush=True)


def seam(results: dict) -> float | None:
    from pipelines.windows.stitch import iter_stitched, seam_score
    wins = sorted(results)
    frames = [f for _, f in iter_stitched(wins, lambda w: results[(w.start, w.end)])]
    return seam_score(frames, wins)


def _spread(groups: list[range], actors: int) -> int:
    """Windows on the busiest actor when groups are dealt round-robin to ``actors`` actors."""
    return max(sum(len(g) for g in groups[a::actors]) for a in range(actors))


def wall_report(args) -> None:
    from mf_model import EditOptions, load_model
    from mf_model.fusion_plan import fusion_groups
    model = load_model(preset_name="tiny", seed=0)
    opts = EditOptions(steps=args.steps, seed=1)
    n = len(spans(args.frames, args.window, args.overlap))
    groups = fusion_groups(n, args.group)
    print(f"\n== wall time: tiny {args.size}², {args.frames} frames = {n} windows of {args.window} (overlap "
          f"{args.overlap}), {args.steps} steps, CPU, {torch.get_num_threads()} thread(s) ==")
    runs: dict[str, list[float]] = {"crossfade": [], "fused": []}
    cpu: dict[str, list[float]] = {"crossfade": [], "fused": []}
    order = [m for r in range(args.repeats) for m in (("crossfade", "fused") if r % 2 == 0 else ("fused", "crossfade"))]
    for mode in order:  # ABBA...: drift of a shared machine hits both modes alike
        start, cpu0 = time.perf_counter(), time.process_time()
        results = {sp: r.frames for sp, r in edit_request(model, mode, args.frames, args.size, args.window,
                                                            args.overlap, opts, args.group)}
        runs[mode].append(time.perf_counter() - start)
        cpu[mode].append(time.process_time() - cpu0)
        if len(runs[mode]) == 1:
            print(f"{mode:<10} seam score {seam(results):.3f} (not a quality figure with random weights)", flush=True)
    times = {m: min(v) for m, v in runs.items()}
    for mode, t in times.items():
        print(f"{mode:<10} {t:7.1f} s per request (best of {', '.join(f'{v:.1f}' for v in runs[mode])}), "
              f"{t / args.frames:6.3f} s per frame; CPU time {', '.join(f'{v:.1f}' for v in cpu[mode])} s "
              "(the wall time of an unshared core)")
    t_win = times["crossfade"] / n
    print(f"\nactors (derived from the measured {t_win:.2f} s per window, not measured with Ray): crossfade spreads "
          "windows, fused keeps a request's groups on one actor")
    for actors in (1, 4):
        cross = math.ceil(n / actors) * t_win
        fused_one = times["fused"]
        fused_groups = _spread(groups, actors) * times["fused"] / n
        print(f"{actors} actor(s): crossfade {cross:6.1f} s, fused on one actor {fused_one:6.1f} s "
              f"(×{fused_one / cross:.2f}), fused with its {len(groups)} groups spread {fused_groups:6.1f} s")
    long_n = len(spans(args.mac_frames, args.window, args.overlap))
    long_g = fusion_groups(long_n, args.group)
    print(f"{args.mac_frames} frames ({long_n} windows, {len(long_g)} groups), in window-times: ", end="")
    print("; ".join(f"{a} actor(s): crossfade {math.ceil(long_n / a)}, fused on one actor {long_n}, fused groups "
                    f"spread {_spread(long_g, a)}" for a in (1, 4)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=136)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--window", type=int, default=24)
    ap.add_argument("--overlap", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--mac-preset", default="sd15")
    ap.add_argument("--mac-size", type=int, default=512)
    ap.add_argument("--mac-frames", type=int, default=2880, help="request length for the MAC count (2 min at 24 fps)")
    ap.add_argument("--mac-steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode (alternating order), the best reported")
    ap.add_argument("--no-wall", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    macs_report(args.mac_preset, args.mac_size, args.mac_frames, args.window, args.overlap, args.mac_steps)
    macs_report("tiny", args.size, args.frames, args.window, args.overlap, args.steps)
    if not args.no_wall:
        wall_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
