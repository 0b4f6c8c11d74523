"""``mf retarget MANIFEST --out URI``: run a request manifest through the Ray Data pipeline."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os

log = logging.getLogger("mf.retarget")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retarget", help="edit every request of a manifest (Parquet, CSV or JSONL) on Ray",
                       description="Run a request manifest through the batch pipeline; writes one video per request "
                                   "and <out>/results.parquet. Re-running skips finished requests.")
    p.add_argument("manifest", help="request manifest URI (.parquet, .csv, .jsonl)")
    p.add_argument("--out", required=True, help="output root URI (videos/, previews/, windows/, results.parquet)")
    p.add_argument("--model", "--weights", dest="weights", default=None,
                   help="weights (official layout dir or our format; local or fsspec URI); default: the preset")
    p.add_argument("--preset", default="tiny", help="model preset when no weights are given (default: tiny)")
    p.add_argument("--dtype", default=None, help="fp32 | fp16 | bf16 (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--address", default=None, help="Ray cluster address; default: start a local Ray")
    p.add_argument("--gpus-per-actor", type=float, default=None,
                   help="GPUs per edit actor (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--actors", type=int, default=1, help="edit actors (fixed pool size)")
    p.add_argument("--prepare-actors", type=int, default=1, help="CPU actors preparing windows")
    p.add_argument("--cpus-per-actor", type=float, default=None,
                   help="CPUs per edit actor (default 1, shrunk to fit small clusters)")
    p.add_argument("--prepare-cpus", type=float, default=None,
                   help="CPUs per prepare actor (default 1, shrunk to fit small clusters)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray started here (default: all)")
    p.add_argument("--max-retries", type=int, default=2,
                   help="extra attempts of a window whose edit actor died (default 2)")
    p.add_argument("--output-scale", choices=("source", "model"), default="source",
                   help="output video at the source resolution (default; the edit is upscaled) or at model scale")
    p.add_argument("--no-crossfade", action="store_true", help="hard cut at overlap midpoints (for comparisons)")
    p.add_argument("--pose-backend", default="mediapipe")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from pipelines.metrics import PipelineMetrics, start_metrics_server
    from pipelines.ray_pipeline import RunConfig, run_pipeline

    if not ray.is_initialized():
        if args.address:
            ray.init(address=args.address, log_to_driver=False)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus_per_actor = args.gpus_per_actor if args.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    device = "cuda" if gpus_per_actor > 0 else "cpu"
    dtype = args.dtype or ("fp16" if device == "cuda" else "fp32")
    cfg = RunConfig(manifest=args.manifest, out=args.out, weights=args.weights, preset=args.preset, dtype=dtype,
                    device=device, actors=args.actors, gpus_per_actor=gpus_per_actor,
                    prepare_actors=args.prepare_actors, max_retries=args.max_retries,
                    crossfade=not args.no_crossfade, pose_backend=args.pose_backend, output_scale=args.output_scale)
    if args.cpus_per_actor is not None:
        cfg = dataclasses.replace(cfg, cpus_per_actor=args.cpus_per_actor)
    if args.prepare_cpus is not None:
        cfg = dataclasses.replace(cfg, prepare_cpus=args.prepare_cpus)
    if os.environ.get("MF_TEST_DIE_ONCE"):  # tests only: an edit actor exits once (see RunConfig.die_once_marker)
        cfg = dataclasses.replace(cfg, die_once_marker=os.environ["MF_TEST_DIE_ONCE"])
    metrics = PipelineMetrics()
    if args.metrics_port is not None:
        start_metrics_server(args.metrics_port, metrics)

    bars: dict = {}

    def progress(kind: str, done: int, total: int) -> None:
        if args.no_progress:
            return
        from tqdm import tqdm

        bar = bars.get(kind)
        if bar is None:
            bar = bars[kind] = tqdm(total=total or None, desc=f"{kind}s", unit=kind, leave=True)
        bar.n = done
        bar.refresh()

    try:
        summary = run_pipeline(cfg, metrics=metrics, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())) or "no requests"
    first = "-" if summary.first_window_seconds is None else f"{summary.first_window_seconds:.1f}s"
    print(f"retarget: requests {counts} | {summary.frames} frames in {summary.wall_seconds:.1f}s "
          f"({summary.frames_per_second:.2f} frames/s) | windows {summary.windows or {}} | first window {first} | "
          f"edit busy {100 * summary.edit_busy_share:.0f}% | results {summary.results_uri}", flush=True)
    return 0 if summary.counts.get("failed", 0) == 0 else 2
