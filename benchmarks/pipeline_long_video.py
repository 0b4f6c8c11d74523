"""Long video vs short video through ``mf retarget``: peak RSS of the driver and the Ray workers, output frame count.

Each length runs in a fresh process with its own local Ray (so peaks are not shared): the demo portrait with camera
movement (H.264 + audio, 24 fps), driven by the demo's waving pose track, the tiny model with few steps at a small
size. Goal (issue 4): the 1,000-frame request's peaks within 1.3x of the 100-frame request's, and exactly the
source's frame count and frame rate in the output.

    python benchmarks/pipeline_long_video.py [--short 100] [--long 1000] [--steps 1] [--size 96] [--window 32]
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pipeline_common import MiB, RssSampler, make_source, make_track, probe_frames, start_ray  # noqa: E402

log = logging.getLogger("benchmarks.pipeline_long_video")


def one(frames: int, args) -> dict:
    from pipelines.batch.config import RunConfig
    from pipelines.batch.driver import run_pipeline
    from pipelines.batch.requests import write_manifest
    from pipelines.batch.results import read_results

    work = Path(args.work)
    src = work / f"source_{frames}.mp4"  # made by the parent process: input generation is not the pipeline's RSS
    drv = work / f"driving_{frames}.parquet"
    out = Path(tempfile.mkdtemp(prefix=f"long{frames}-", dir=work))
    manifest = out / "requests.jsonl"
    write_manifest([{"request_id": f"long-{frames}", "source": str(src), "driving": str(drv), "steps": args.steps,
                     "size": args.size, "window": args.window, "overlap": args.overlap}], str(manifest))
    start_ray(args.num_cpus)
    with RssSampler() as rss:
        t0 = time.perf_counter()
        summary = run_pipeline(RunConfig(manifest=str(manifest), out=str(out / "out")))
        wall = time.perf_counter() - t0
    row = read_results(summary.results_uri)[0]
    n, rate = probe_frames(row["output_uri"]) if row["status"] == "succeeded" else (0, "")
    return {"frames": frames, "status": row["status"], "error": row["error"], "windows": row["windows"],
            "out_frames": n, "out_fps": rate, "wall_s": round(wall, 1),
            "driver_peak_mib": round(rss.driver_peak / MiB, 1), "worker_peak_mib": round(rss.worker_peak / MiB, 1),
            "workers_total_peak_mib": round(rss.workers_total_peak / MiB, 1), "samples": rss.samples}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", type=int, default=100)
    ap.add_argument("--long", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--overlap", type=int, default=8)
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.one is not None:
        print("RESULT " + json.dumps(one(args.one, args)), flush=True)
        return 0
    args.work = args.work or tempfile.mkdtemp(prefix="mf-bench-long-")
    res = {}
    for n in (args.short, args.long):
        make_track(Path(args.work) / f"driving_{n}.parquet", make_source(Path(args.work) / f"source_{n}.mp4", n), n)
    for n in (args.short, args.long):
        cmd = [sys.executable, __file__, "--one", str(n), "--work", args.work, "--steps", str(args.steps),
               "--size", str(args.size), "--window", str(args.window), "--overlap", str(args.overlap)]
        if args.num_cpus:
            cmd += ["--num-cpus", str(args.num_cpus)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
            return 1
        res[n] = json.loads(line[0][7:])
        print(json.dumps(res[n]))
    s, l_ = res[args.short], res[args.long]
    for key in ("driver_peak_mib", "worker_peak_mib", "workers_total_peak_mib"):
        print(f"{key}: {s[key]:.0f} MiB ({args.short} frames) vs {l_[key]:.0f} MiB ({args.long} frames): "
              f"ratio {l_[key] / s[key]:.2f} (goal <= 1.3)")
    for r in (s, l_):
        print(f"{r['frames']} frames: output {r['out_frames']} frames at {r['out_fps']} fps "
              f"({'exact' if r['out_frames'] == r['frames'] and r['out_fps'] == '24/1' else 'MISMATCH'}), "
              f"{r['windows']} windows, {r['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
