"""Window parallelism inside one long request: ``fusion=crossfade`` vs ``fusion=fused`` with 1 and N edit actors.

One request (the demo portrait, the waving pose track, the tiny preset, few steps at a small size) goes through the
real pipeline (``pipelines.batch.driver.run_pipeline`` on a fresh local Ray per run, in its own process). Crossfade
mode makes each window a task, so a request's windows spread over the edit pool; fused mode makes each fusion group
(``mf_model.fusion_plan.fusion_groups``: up to 8 consecutive windows) one task on one actor. Printed per mode x
actors: wall time, first-window time, edit span (first edit start to last edit end), windows, tasks (groups in fused
mode), the windows the busiest actor edited, and the schedule model in window-edit units:

    crossfade, N actors:  ceil(W / N)               fused, N actors:  ceil(G / N) * ceil(W / G)

(W windows, G groups), bounded below by ceil(W / C) on C cores, and the edit span it predicts: units x (the 1-actor
run's edit span / W). The local Ray gets the real CPU count (``--num-cpus``, default ``os.cpu_count()``); the
pipeline's static-cluster rule (``StageResources.fit``) shrinks the actors' CPU shares to fit, so on a 2-core box
4 actors are scheduled but at most ~2 edit at full speed. Worker threads: OMP/MKL_NUM_THREADS=1, torch 1 thread.

    python benchmarks/fused_actors.py [--frames 200] [--steps 6] [--size 64] [--window 8] [--overlap 2] \
        [--actors 1 4] [--modes crossfade fused] [--prepare-actors 1] [--num-cpus N] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pipeline_common import make_source, make_track, start_ray  # noqa: E402

log = logging.getLogger("benchmarks.fused_actors")
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def predicted_units(mode: str, windows: int, actors: int, cores: int) -> tuple[int, int]:
    """Window-edit units of the busiest actor (the schedule model above), and the same bounded by ``cores``."""
    from mf_model.fusion_plan import fusion_groups

    if mode == "fused":
        groups = len(fusion_groups(windows))
        units = math.ceil(groups / actors) * math.ceil(windows / groups)
    else:
        units = math.ceil(windows / actors)
    return units, max(units, math.ceil(windows / max(1, min(cores, actors))))


def one(mode: str, actors: int, args) -> dict:
    import torch

    from pipelines.batch import collector
    from pipelines.batch.config import RunConfig, RunOptions
    from pipelines.batch.driver import run_pipeline
    from pipelines.batch.ray_stages import EditStage
    from pipelines.batch.requests import write_manifest
    from pipelines.batch.results import read_results

    torch.set_num_threads(1)

    class TaggedEdit(EditStage):
        """The pipeline's edit actor, its node id tagged with its pid so each actor's tasks can be told apart."""

        def setup(self) -> None:
            import torch

            torch.set_num_threads(1)
            super().setup()
            self.node = f"{self.node[:8]}:{os.getpid()}"

    tasks: list[tuple[str, float, float, int]] = []  # (actor, edit start, edit end, windows) per task
    record = collector.RequestCollector._record

    def _record(self, task) -> None:
        t = task.times
        tasks.append((task.edit_node or "?", t.edit_started_at or 0.0, t.edit_ended_at or 0.0, len(task.members)))
        record(self, task)

    collector.RequestCollector._record = _record
    work = Path(args.work)
    out = Path(tempfile.mkdtemp(prefix=f"{mode}-{actors}-", dir=work))
    manifest = out / "requests.jsonl"
    write_manifest([{"request_id": f"{mode}-{actors}", "source": str(work / "source.mp4"),
                     "driving": str(work / "driving.parquet"), "steps": args.steps, "size": args.size,
                     "window": args.window, "overlap": args.overlap, "fusion": mode}], str(manifest))
    start_ray(args.num_cpus)
    cfg = RunConfig.build(RunOptions(actors=actors, prepare_actors=args.prepare_actors), manifest=str(manifest),
                          out=str(out / "out"))
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    summary = run_pipeline(cfg, edit_stage=TaggedEdit)
    wall = time.perf_counter() - t0
    row = read_results(summary.results_uri)[0]
    per_actor = Counter()
    for actor, _, _, n in tasks:
        per_actor[actor] += n
    return {"mode": mode, "actors": actors, "status": row["status"], "error": row["error"],
            "fusion": row["fusion"], "windows": row["windows"], "tasks": len(tasks), "frames": row["frames"],
            "wall_s": round(wall, 1), "first_window_s": round(summary.first_window_seconds or 0.0, 1),
            "edit_span_s": round(summary.edit_span_seconds, 1), "model_s": round(summary.model_seconds, 1),
            "prepare_s": round(row["seconds_prepare"] or 0.0, 1), "stitch_s": round(row["seconds_stitch"] or 0.0, 1),
            "actors_used": len(per_actor), "busiest_windows": max(per_actor.values(), default=0),
            "per_actor": sorted(per_actor.values(), reverse=True),
            "edit_cpus": summary.resources.get("edit_actor_cpus"),
            "load1": [round(load0, 1), round(os.getloadavg()[0], 1)]}


def run_child(mode: str, actors: int, args) -> dict:
    cmd = [sys.executable, __file__, "--one", mode, str(actors), "--work", args.work, "--steps", str(args.steps),
           "--size", str(args.size), "--window", str(args.window), "--overlap", str(args.overlap),
           "--prepare-actors", str(args.prepare_actors), "--num-cpus", str(args.num_cpus)]
    for _ in range(3):  # a local Ray may time out starting on a loaded box: try again
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **THREADS})
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if line or "timed out during startup" not in p.stderr:
            break
    if p.returncode or not line:
        print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{mode} x {actors} actors failed (exit {p.returncode})")
    return json.loads(line[0][7:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--overlap", type=int, default=2)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--modes", nargs="+", default=["crossfade", "fused"], choices=["crossfade", "fused"])
    ap.add_argument("--prepare-actors", type=int, default=1)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.one is not None:
        print("RESULT " + json.dumps(one(args.one[0], int(args.one[1]), args)), flush=True)
        return 0
    args.work = args.work or tempfile.mkdtemp(prefix="mf-bench-fused-actors-")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    make_track(work / "driving.parquet", make_source(work / "source.mp4", args.frames), args.frames)
    res = []
    for mode in args.modes:
        for n in args.actors:
            res.append(run_child(mode, n, args))
            print(json.dumps(res[-1]), flush=True)
    base = {r["mode"]: r for r in res if r["actors"] == min(args.actors)}
    print(f"\n{args.frames} frames, window {args.window}/{args.overlap}, {args.steps} steps, {args.size} px, tiny; "
          f"{args.num_cpus} CPUs for Ray, {args.prepare_actors} prepare actor(s)")
    head = ("mode", "actors", "status", "W", "tasks", "wall s", "1st win s", "edit span s", "busiest", "per actor",
            "units", "units@cpus", "pred span s")
    print(" | ".join(head))
    for r in res:
        units, bounded = predicted_units(r["mode"], r["windows"] or 0, r["actors"], args.num_cpus)
        b = base.get(r["mode"])
        b_units = predicted_units(r["mode"], b["windows"] or 0, b["actors"], args.num_cpus)[1] if b else 0
        per_unit = b["edit_span_s"] / b_units if b_units else 0.0
        print(" | ".join(str(x) for x in (
            r["mode"], r["actors"], r["status"], r["windows"], r["tasks"], r["wall_s"], r["first_window_s"],
            r["edit_span_s"], r["busiest_windows"], "/".join(map(str, r["per_actor"])), units, bounded,
            round(bounded * per_unit, 1))))
    for r in res:
        if r["actors_used"] < r["actors"]:
            print(f"note: {r['mode']} x {r['actors']} actors: only {r['actors_used']} edit actor(s) got tasks "
                  f"({r['tasks']} tasks): the request's tasks did not spread over the pool")
    for mode, b in base.items():
        for r in res:
            if r["mode"] == mode and r is not b:
                print(f"{mode}: {b['actors']} -> {r['actors']} actors: wall x{b['wall_s'] / r['wall_s']:.2f}, "
                      f"edit span x{b['edit_span_s'] / max(r['edit_span_s'], 1e-9):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
