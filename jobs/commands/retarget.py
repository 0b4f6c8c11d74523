"""``mf retarget MANIFEST --out URI``: run a request manifest through the Ray Data pipeline.

:func:`add_run_options` holds the options that define a run; ``mf submit`` forwards exactly these (see
:data:`LOCAL_ONLY` for the ones it leaves out). Their defaults are those of
:class:`~pipelines.batch.config.RunOptions` (the choices: :data:`mf_model.config.PRESETS` and ``DTYPES``,
:data:`pipelines.conditioning.poses.registry.BACKENDS`), :func:`run_options` turns the parsed flags into one, and
:func:`run_manifest` — which ``mf demo`` calls too — builds the run's config with
:meth:`~pipelines.batch.config.RunConfig.build` and runs it.
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional

from mf_model.config import DTYPES, PRESETS
from pipelines.batch.config import OUTPUT_SCALES, RunOptions
from pipelines.batch.status import FAILED
from pipelines.conditioning.poses.registry import BACKENDS

log = logging.getLogger("mf.retarget")

RUN_DEFAULTS = RunOptions()  # every run option's default

# options that only make sense for the process they are given to (mf submit does not forward them)
LOCAL_ONLY = ("address", "num_cpus")


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--weights", dest="weights", default=RUN_DEFAULTS.weights,
                   help="weights (official layout dir or our format; local or fsspec URI); default: the preset")
    p.add_argument("--preset", default=RUN_DEFAULTS.preset,
                   help=f"model preset when no weights are given: {', '.join(PRESETS)} "
                        f"(default: {RUN_DEFAULTS.preset})")
    p.add_argument("--dtype", default=RUN_DEFAULTS.dtype, choices=tuple(DTYPES),
                   help="default: fp16 on GPU, fp32 on CPU")
    p.add_argument("--gpus-per-actor", type=float, default=RUN_DEFAULTS.gpus_per_actor,
                   help="GPUs per edit actor (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--actors", type=int, default=RUN_DEFAULTS.actors, help="edit actors (fixed pool size)")
    p.add_argument("--prepare-actors", type=int, default=RUN_DEFAULTS.prepare_actors,
                   help="CPU actors preparing windows")
    p.add_argument("--cpus-per-actor", type=float, default=RUN_DEFAULTS.cpus_per_actor,
                   help=f"CPUs per edit actor (default {RUN_DEFAULTS.cpus_per_actor:g}, shrunk to fit small clusters)")
    p.add_argument("--prepare-cpus", type=float, default=RUN_DEFAULTS.prepare_cpus,
                   help=f"CPUs per prepare actor (default {RUN_DEFAULTS.prepare_cpus:g}, shrunk to fit small clusters)")
    p.add_argument("--max-retries", type=int, default=RUN_DEFAULTS.max_retries,
                   help=f"extra attempts of a window whose edit actor died (default {RUN_DEFAULTS.max_retries})")
    p.add_argument("--output-scale", choices=OUTPUT_SCALES, default=RUN_DEFAULTS.output_scale,
                   help="output video at the source resolution (the edit is upscaled) or at model scale "
                        f"(default: {RUN_DEFAULTS.output_scale})")
    p.add_argument("--no-crossfade", action="store_true", default=not RUN_DEFAULTS.crossfade,
                   help="hard cut at overlap midpoints (for comparisons)")
    p.add_argument("--keep-windows", action="store_true", default=RUN_DEFAULTS.keep_windows,
                   help="keep each request's edited windows (<out>/windows/) after its video is committed")
    p.add_argument("--pose-backend", default=RUN_DEFAULTS.pose_backend, choices=BACKENDS)
    p.add_argument("--edit-resource", action="append", default=[], metavar="NAME=AMOUNT",
                   help="a custom Ray resource each edit actor asks for (repeat), pinning them to nodes that have it")
    p.add_argument("--prepare-resource", action="append", default=[], metavar="NAME=AMOUNT",
                   help="a custom Ray resource each prepare actor asks for (repeat)")
    p.add_argument("--shared-fs", action="store_true", default=RUN_DEFAULTS.shared_fs,
                   help="a local-path --out is a mount every node sees (needed on a multi-node cluster)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-preflight", action="store_true",
                   help="skip the pre-flight (a worker reads a sample of the inputs and writes a probe under --out "
                        "before any work starts; see jobs/preflight.py)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retarget", help="edit every request of a manifest (Parquet, CSV or JSONL) on Ray",
                       description="Run a request manifest through the batch pipeline; writes one video per request "
                                   "and <out>/results.parquet. Re-running skips finished requests. Exit status: 0 "
                                   "all succeeded or skipped, 2 some failed, 1 the run itself failed.")
    p.add_argument("manifest", help="request manifest URI (.parquet, .csv, .jsonl)")
    p.add_argument("--out", required=True, help="output root URI (videos/, previews/, windows/, results.parquet)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray started here (default: all)")
    add_run_options(p)
    p.set_defaults(func=run)


def _resources(items: list[str], flag: str) -> tuple[tuple[str, float], ...]:
    out = []
    for item in items:
        name, sep, amount = item.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not sep or not name.strip() or value <= 0:
            raise ValueError(f"{flag} {item!r}: expected NAME=AMOUNT with AMOUNT > 0")
        out.append((name.strip(), value))
    return tuple(out)


def run_options(args: argparse.Namespace) -> RunOptions:
    """The :class:`~pipelines.batch.config.RunOptions` of the run options parsed into ``args``
    (``ValueError`` for a malformed ``--edit-resource``/``--prepare-resource``)."""
    return RunOptions(
        weights=args.weights, preset=args.preset, dtype=args.dtype, gpus_per_actor=args.gpus_per_actor,
        actors=args.actors, prepare_actors=args.prepare_actors, cpus_per_actor=args.cpus_per_actor,
        prepare_cpus=args.prepare_cpus, edit_resources=_resources(args.edit_resource, "--edit-resource"),
        prepare_resources=_resources(args.prepare_resource, "--prepare-resource"), pose_backend=args.pose_backend,
        max_retries=args.max_retries, crossfade=not args.no_crossfade, output_scale=args.output_scale,
        keep_windows=args.keep_windows, shared_fs=args.shared_fs)


class _Bars:
    """The run's one progress display: a tqdm bar over the windows edited, of those planned so far (the total grows
    as requests are planned), with the requests finished in its postfix. Its clock starts with the run (the driver's
    first call is ``("request", 0, total)``) and ticks every second between events; rate and ETA are averages over
    the whole run (``smoothing=0``), not over the last few windows. Shown on a terminal only (tqdm's
    ``disable=None``): CI logs get the summary line alone; ``--no-progress`` turns it off everywhere."""

    TICK_S = 1.0

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self._stop = None

    def __call__(self, kind: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self._open(f"requests {done}/{total}" if kind == "request" else None)
        bar = self.bar
        if bar.disable:  # not a terminal
            return
        if kind == "request":
            if bar.postfix != f"requests {done}/{total}":
                bar.set_postfix_str(f"requests {done}/{total}")
        elif kind == "window":
            if total and bar.total != total:
                bar.total = total
            if done > bar.n:
                bar.update(done - bar.n)
            else:
                bar.refresh()

    def _open(self, postfix) -> None:
        import sys
        import threading

        from tqdm import tqdm

        # sys.stderr at call time: the console stream jobs.cli set up (fd 2 may point at the log file)
        self.bar = tqdm(total=None, desc="windows", unit="window", file=sys.stderr, disable=None, smoothing=0,
                        leave=True, postfix=postfix, **_width(sys.stderr))
        if not self.bar.disable:
            self._stop = threading.Event()
            threading.Thread(target=self._tick, args=(self.bar, self._stop), name="mf-progress", daemon=True).start()

    def _tick(self, bar, stop) -> None:
        while not stop.wait(self.TICK_S):
            bar.refresh()  # takes the bar's lock: safe against the driver's updates

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _width(stream) -> dict:
    """Follow the terminal's size; a fixed one where the terminal reports 0x0 (tqdm would draw nothing)."""
    import os

    try:
        cols = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        cols = 0
    return {"dynamic_ncols": True} if cols > 0 else {"ncols": 100, "nrows": 24}


def run(args: argparse.Namespace) -> int:
    return run_manifest(args.manifest, args.out, run_options(args), address=args.address, num_cpus=args.num_cpus,
                        metrics_port=args.metrics_port, progress=not args.no_progress,
                        preflight=not getattr(args, "no_preflight", False))


def run_manifest(manifest: str, out: str, options: RunOptions, *, address: Optional[str] = None,
                 num_cpus: Optional[int] = None, metrics_port: Optional[int] = None, progress: bool = True,
                 preflight: bool = True) -> int:
    """Connect to Ray (:func:`jobs.runtime.connect_ray`), build the run's config from ``options`` (the GPU share
    per edit actor resolved against the cluster; local paths made absolute), check from a worker that the run's
    storage works there (:func:`jobs.preflight.preflight`, unless ``preflight`` is off), run it with a progress
    display and print the summary line. Exit status: 0 every request succeeded or was skipped, 2 some failed or the
    pre-flight found a problem (reported, nothing run)."""
    from jobs.preflight import PreflightError
    from jobs.preflight import preflight as check_run
    from jobs.runtime import cluster_shape, connect_ray, gpus_per_actor
    from pipelines.batch.config import RunConfig
    from pipelines.batch.driver import run_pipeline
    from pipelines.batch.metrics import PipelineMetrics, start_metrics_server
    from pipelines.media import storage

    connect_ray(address, num_cpus=num_cpus)
    shape = cluster_shape()
    cfg = RunConfig.build(options, manifest=storage.absolute(manifest), out=storage.absolute(out),
                          gpus=gpus_per_actor(options.gpus_per_actor, shape), cluster=shape)
    if preflight:
        try:
            check_run(cfg, shape)
        except PreflightError as exc:
            log.error("%s", exc)
            return 2
    metrics = PipelineMetrics()
    if metrics_port is not None:
        start_metrics_server(metrics_port, metrics)
    bars = _Bars(progress)
    try:
        summary = run_pipeline(cfg, metrics=metrics, progress=bars)
    finally:
        bars.close()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())) or "no requests"
    first = "-" if summary.first_window_seconds is None else f"{summary.first_window_seconds:.1f}s"
    print(f"retarget: requests {counts} | {summary.frames} frames in {summary.wall_seconds:.1f}s "
          f"({summary.frames_per_second:.2f} frames/s) | windows {summary.windows or {}} | first window {first} | "
          f"edit busy {100 * summary.edit_busy_share:.0f}% | {summary.bytes_written / 2**20:.1f} MiB written | "
          f"results {summary.results_uri}", flush=True)
    return 0 if summary.counts.get(FAILED, 0) == 0 else 2
