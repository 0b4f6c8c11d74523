"""The driver of ``mf retarget``: a request manifest through the Ray Data stages to the result manifest.

Stages (rows are windows, never frames or whole videos; docs/architecture.md, "One request through a batch run")::

    requests ─ skip finished ─▶ plan (Ray task per request, CPU): probe, length map, alignment, windows
        ─▶ prepare (fixed CPU actor pool): decode the window's frames only, poses, masks, renders
        ─▶ edit (fixed actor pool holding the model, num_gpus per actor, batch_size=1): edit, write the window's
           frames atomically to ``<out>/windows/<request_id>/<window_id>.npz``, emit a small row
        ─▶ driver: collects the small rows per request; when a request's windows are all in, a finish task (CPU)
           stitches them in frame order into ffmpeg → result row
        ─▶ ``<out>/results.parquet`` (atomic)

Restart: a finished request has ``<out>/requests/<request_id>.json`` (written after its video is committed);
re-running skips it (status ``skipped``). Finished windows (their ``.npz`` exists) are not edited again. Ids are
deterministic and the initial noise is frame-indexed, so a re-run produces identical outputs. The caller connects to
Ray first (``jobs.runtime.connect_ray``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from pipelines.batch.config import RunConfig
from pipelines.batch.finish import finish_request, result_row, skipped_row
from pipelines.batch.identity import RequestIdentity, model_key, request_identities
from pipelines.batch.metrics import PipelineMetrics
from pipelines.batch.ray_stages import EditStage, PrepareStage, configure_data_context, plan_batch, requests_table
from pipelines.batch.requests import Manifest, Request, read_manifest
from pipelines.batch.results import ResultRow, write_results
from pipelines.batch.tasks import WindowTask, error_text, tasks_from_table
from pipelines.media import storage

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (kind, done, total): "window" and "request"


@dataclass
class RunSummary:
    counts: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    windows: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    edit_busy_seconds: float = 0.0  # inside the edit actors (model, write)
    model_seconds: float = 0.0  # inside model.edit
    first_window_seconds: Optional[float] = None  # run start → first window edited
    edit_span_seconds: float = 0.0  # first edit started → last edit ended
    actors: int = 1
    results_uri: str = ""
    bytes_written: int = 0  # output videos and previews of this run
    nodes: dict[str, set[str]] = field(default_factory=dict)  # stage → Ray node ids its actors ran on
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def edit_busy_share(self) -> float:
        """Share of the run (from the first edit on) the edit actors were busy."""
        denom = self.actors * self.edit_span_seconds
        return self.edit_busy_seconds / denom if denom > 0 else 0.0

    @property
    def model_share(self) -> float:
        """Share of the whole wall time the edit actors spent inside the model."""
        denom = self.actors * self.wall_seconds
        return self.model_seconds / denom if denom > 0 else 0.0


class _Collector:
    """Gathers window tasks per request as they stream in, starts a finish task when a request is complete, and
    keeps the run's results, metrics, progress and summary figures."""

    def __init__(self, cfg: RunConfig, total: int, metrics: PipelineMetrics, progress: Optional[Progress],
                 finish_remote) -> None:
        self.cfg, self.total, self.metrics, self.progress = cfg, total, metrics, progress
        self.finish_remote = finish_remote
        self.t_start, self.wall_start = time.perf_counter(), time.time()
        self.results: list[ResultRow] = []
        self.pending: dict[str, list[WindowTask]] = defaultdict(list)
        self.futures: dict[Any, tuple[Request, RequestIdentity]] = {}
        self.window_counts: Counter = Counter()
        self.windows_known = self.windows_done = 0
        self.busy = self.model = 0.0
        self.edit_spans: list[tuple[float, float]] = []
        self.nodes: dict[str, set[str]] = defaultdict(set)

    def add_result(self, row: ResultRow) -> None:
        if row.seconds_total is None:  # seconds from the run's start until the request's row is in
            row.seconds_total = time.perf_counter() - self.t_start
        self.results.append(row)
        self.metrics.record_result_row(row)
        if self.progress:
            self.progress("request", len(self.results), self.total)

    def add_task(self, task: WindowTask) -> None:
        if task.plan_failed:
            self.add_result(finish_request([task], self.cfg))
            return
        rid = task.request.request_id
        if not self.pending[rid]:
            self.windows_known += task.count
        self.windows_done += 1
        self._record(task)
        self.pending[rid].append(task)
        if len(self.pending[rid]) == task.count:
            self.futures[self.finish_remote.remote(self.pending.pop(rid), self.cfg)] = (task.request, task.inputs)

    def _record(self, task: WindowTask) -> None:
        t = task.times
        self.metrics.window_finished(task.status, seconds=t.stage_seconds(), edit_seconds=t.model,
                                     busy_seconds=t.busy, gpu_peak_bytes=t.gpu_memory_peak)
        self.metrics.add_busy(t.prepare, "prepare")
        self.metrics.set_queue_depth(self.windows_known - self.windows_done)
        self.window_counts[task.status] += 1
        for stage, node in (("prepare", task.prepare_node), ("edit", task.edit_node)):
            if node:
                self.nodes[stage].add(node)
        self.busy += t.busy or 0.0
        self.model += t.model or 0.0
        if t.edit_started_at:
            self.edit_spans.append((t.edit_started_at, t.edit_ended_at))
        if self.progress:
            self.progress("window", self.windows_done, self.windows_known)

    def collect(self, block: bool) -> None:
        import ray

        if not self.futures:
            return
        done, _ = ray.wait(list(self.futures), num_returns=len(self.futures) if block else 1,
                           timeout=None if block else 0)
        for f in done:
            req, inputs = self.futures.pop(f)
            try:
                row = ray.get(f)
            except Exception as exc:  # noqa: BLE001 - the finish task itself died (retries exhausted)
                row = result_row(req, inputs, "failed", error=f"stitch: {error_text(exc)}")
            self.add_result(row)

    def close(self) -> None:
        self.collect(block=True)
        self.metrics.set_queue_depth(0)
        for tasks in self.pending.values():  # cannot happen unless rows were lost
            self.add_result(result_row(tasks[0].request, tasks[0].inputs, "failed",
                                       error=f"only {len(tasks)} of {tasks[0].count} windows came back"))

    def fill(self, summary: RunSummary) -> None:
        summary.windows = dict(self.window_counts)
        summary.edit_busy_seconds, summary.model_seconds = self.busy, self.model
        summary.nodes = dict(self.nodes)
        if self.edit_spans:
            summary.first_window_seconds = min(e for _, e in self.edit_spans) - self.wall_start
            summary.edit_span_seconds = (max(e for _, e in self.edit_spans)
                                         - min(s for s, _ in self.edit_spans))


def _stream(cfg: RunConfig, todo: list[tuple[Request, RequestIdentity]], edit_stage: type):
    """The Ray Data pipeline over ``todo``: an iterator of Arrow batches of window tasks."""
    import ray.data

    configure_data_context()
    res = cfg.resources
    ds = ray.data.from_arrow([requests_table(r, i) for r, i in todo])
    ds = ds.map_batches(plan_batch, fn_kwargs={"cfg": cfg}, batch_size=1, batch_format="pyarrow",
                        num_cpus=res.plan_cpus, memory=res.plan_memory)
    ds = ds.map_batches(PrepareStage, fn_constructor_kwargs={"cfg": cfg}, batch_size=1, batch_format="pyarrow",
                        **PrepareStage.map_args(cfg))
    ds = ds.map_batches(edit_stage, fn_constructor_kwargs={"cfg": cfg}, batch_size=1, batch_format="pyarrow",
                        **edit_stage.map_args(cfg))
    return ds.iter_batches(batch_size=1, batch_format="pyarrow")


def _prepare_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` checked and fitted for the connected cluster (:meth:`RunConfig.for_cluster`), with this run's id."""
    import ray

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    cfg = cfg.for_cluster(nodes, float(ray.cluster_resources().get("CPU", 1.0)))
    return dataclasses.replace(cfg, run_id=cfg.run_id or uuid.uuid4().hex[:12])


def _sorted_results(results: list[ResultRow], man: Manifest) -> list[ResultRow]:
    order = {r.request_id: r.row for r in man.requests}
    order.update({b.request_id: b.row for b in man.invalid})
    return sorted(results, key=lambda r: order.get(r.request_id, 0))


def _fallback_results_uri(cfg: RunConfig) -> str:
    return os.path.join(tempfile.gettempdir(), "mf-results", cfg.run_id, cfg.results_name)


def _write_results(results: list[ResultRow], cfg: RunConfig) -> str:
    """The result manifest to ``<out>``; when that fails, to a local folder (logged) so no result is lost."""
    try:
        write_results(results, cfg.results_uri)
        return cfg.results_uri
    except Exception as exc:  # noqa: BLE001 - the results must land somewhere
        fallback = _fallback_results_uri(cfg)
        log.error("cannot write %s (%s): the result manifest is at %s", cfg.results_uri, error_text(exc), fallback)
        write_results(results, fallback)
        return fallback


def _out_error(cfg: RunConfig) -> Optional[str]:
    try:
        storage.check_writable(cfg.out)
        return None
    except Exception as exc:  # noqa: BLE001
        log.error("--out %s is not writable: %s", cfg.out, error_text(exc))
        return f"output: cannot write to {cfg.out}: {error_text(exc)}"


def _triage(man: Manifest, cfg: RunConfig, col: _Collector) -> list[tuple[Request, RequestIdentity]]:
    """Result rows for invalid, unwritable and already finished requests; the rest, with their identities, to do."""
    for bad in man.invalid:
        col.add_result(ResultRow.for_invalid(bad))
    out_error = _out_error(cfg)
    todo = []
    idents = request_identities(man.requests, model_key(cfg.model))
    for req, inputs in zip(man.requests, idents):
        if out_error:
            col.add_result(result_row(req, inputs, "failed", error=out_error))
        elif (done := skipped_row(req, inputs, cfg)) is not None:
            col.add_result(done)
        else:
            todo.append((req, inputs))
    return todo


def run_pipeline(cfg: RunConfig, metrics: Optional[PipelineMetrics] = None, progress: Optional[Progress] = None,
                 *, edit_stage: type = EditStage) -> RunSummary:
    """Run a manifest end to end on the current Ray cluster. ``edit_stage``: an :class:`EditStage` subclass (tests
    inject faults there)."""
    import ray

    cfg = _prepare_config(cfg)
    metrics = metrics or PipelineMetrics()
    metrics.start_run()
    man = read_manifest(cfg.manifest, cfg.out)
    finish_remote = ray.remote(num_cpus=cfg.resources.stitch_cpus,
                               max_retries=cfg.processing.max_retries)(finish_request)
    col = _Collector(cfg, len(man), metrics, progress, finish_remote)
    if progress:
        progress("request", 0, len(man))  # the bar's clock starts with the run
    todo = _triage(man, cfg, col)
    if todo:
        for batch in _stream(cfg, todo, edit_stage):
            for task in tasks_from_table(batch):
                col.add_task(task)
            col.collect(block=False)
        col.close()
    results = _sorted_results(col.results, man)
    summary = RunSummary(actors=cfg.resources.actors, results_uri=_write_results(results, cfg),
                         resources=cfg.resources.as_dict(), wall_seconds=time.perf_counter() - col.t_start,
                         counts=dict(Counter(r.status for r in results)),
                         frames=sum(r.frames or 0 for r in results if r.status == "succeeded"),
                         bytes_written=sum(r.bytes_written or 0 for r in results if r.status == "succeeded"))
    col.fill(summary)
    return summary
