"""Pipeline overhead of ``mf retarget``: N >= 8 requests on the tiny model, how busy the edit stage is.

Prints, from the run's window rows (:class:`pipelines.batch.driver.RunSummary`):

- time from start to the first window edited (``first_window_s``: Ray start-up excluded, actor start and model load
  included);
- edit busy share: seconds the edit actors spent on windows / (actors x time from the first edit's start to the last
  edit's end) — goal >= 0.80 once the edit stage started;
- model share: seconds inside ``model.edit`` / (actors x whole wall time).

    python benchmarks/pipeline_overhead.py [--requests 8] [--frames 40] [--steps 8] [--size 96] [--actors 1]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pipeline_common import demo_manifest, start_ray  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--prepare-actors", type=int, default=1)
    ap.add_argument("--num-cpus", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from pipelines.batch.config import RunConfig, StageResources
    from pipelines.batch.driver import run_pipeline

    work = Path(tempfile.mkdtemp(prefix="mf-bench-overhead-"))
    manifest = demo_manifest(work, args.requests, args.frames, steps=args.steps, size=args.size, window=args.window,
                             overlap=args.overlap)
    start_ray(args.num_cpus)
    s = run_pipeline(RunConfig(manifest=manifest, out=str(work / "out"),
                               resources=StageResources(actors=args.actors, prepare_actors=args.prepare_actors)))
    report = {"requests": s.counts, "windows": s.windows, "frames": s.frames, "wall_s": round(s.wall_seconds, 1),
              "first_window_s": round(s.first_window_seconds or 0, 1),
              "edit_span_s": round(s.edit_span_seconds, 1),
              "edit_busy_share": round(s.edit_busy_share, 3), "model_share_of_wall": round(s.model_share, 3),
              "model_share_of_edit_busy": round(s.model_seconds / s.edit_busy_seconds, 3)
              if s.edit_busy_seconds else None,
              "frames_per_s": round(s.frames_per_second, 2), "resources": s.resources}
    print(json.dumps(report))
    print(f"edit stage busy {100 * s.edit_busy_share:.1f}% once started (goal >= 80%); first window edited after "
          f"{s.first_window_seconds:.1f}s; inside the model {100 * s.model_share:.1f}% of the wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
