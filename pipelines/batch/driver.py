"""The driver of ``mf retarget``: a request manifest through the Ray Data stages to the result manifest.

:func:`run_pipeline` reads as its steps (docs/architecture.md, "One request through a batch run"); rows are requests,
then windows, never frames or whole videos::

    config fitted to the cluster, run id ─▶ manifest ─▶ triage (driver): invalid requests (and all, for an
        unwritable --out) get their rows now; nothing is looked up per request in the driver
    ─▶ plan (Ray task per request, CPU; past 1,024 requests a task per block of      ┐ Ray Data stages
       several): identity and done marker (a finished request: one ``skipped``       │
       task holding its row), probe, length map, alignment, windows                  │
    ─▶ prepare (fixed CPU actor pool): decode the window's frames only, poses,      │ (pipelines.batch.ray_stages,
       masks, renders                                                                │ one row per batch)
    ─▶ edit (fixed actor pool holding the model): edit, write the window's frames   │
       atomically to ``<out>/windows/<request_id>/<window_id>.npz``, a small row    ┘
    ─▶ collect (driver, pipelines.batch.collector): the rows per request; a complete request → a finish task
       (Ray task, CPU) stitches its windows in frame order into ffmpeg → its result row
    ─▶ ``<out>/results.parquet`` (atomic) and the :class:`RunSummary`

Restart: a finished request has ``<out>/requests/<request_id>.json`` (written after its video is committed);
re-running skips it (status ``skipped``) while its content key is unchanged. Finished windows (their ``.npz`` loads)
are not edited again. Ids are deterministic and the initial noise is frame-indexed, so a re-run produces identical
outputs. The caller connects to Ray first (``jobs.runtime.connect_ray``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

from pipelines.batch.collector import Progress, RequestCollector
from pipelines.batch.config import ClusterShape, RunConfig
from pipelines.batch.identity import model_key
from pipelines.batch.metrics import PipelineMetrics
from pipelines.batch.ray_stages import EditStage, PlanStage, PrepareStage, configure_data_context
from pipelines.batch.requests import Manifest, read_manifest
from pipelines.batch.results import ResultRow, write_results
from pipelines.batch.stage_base import BATCH, add_stage
from pipelines.batch.status import FAILED, SUCCEEDED
from pipelines.batch.tasks import RequestRow, error_text, requests_table
from pipelines.media import storage

log = logging.getLogger(__name__)

ONE_PER_BLOCK = 1024  # manifests up to this many requests: a plan block (task) per request
MAX_BLOCK_ROWS = 256  # at most this many requests per plan block


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


def plan_block_rows(n: int) -> int:
    """Requests per plan block (a plan task each): one up to :data:`ONE_PER_BLOCK` requests (every request planned
    in parallel), then more, up to :data:`MAX_BLOCK_ROWS`, so that a large manifest is at most about
    :data:`ONE_PER_BLOCK` blocks: the driver's start does not grow with the manifest's size."""
    return max(1, min(MAX_BLOCK_ROWS, -(-n // ONE_PER_BLOCK)))


def _stream(cfg: RunConfig, todo: list[RequestRow], edit_stage: type[EditStage]) -> Iterator[Any]:
    """The Ray Data pipeline over ``todo``: an iterator of Arrow batches of window tasks."""
    import ray.data

    configure_data_context()
    k = plan_block_rows(len(todo))
    ds = ray.data.from_arrow([requests_table(todo[i:i + k]) for i in range(0, len(todo), k)])
    for stage in (PlanStage(cfg, model=model_key(cfg.model)), PrepareStage(cfg), edit_stage(cfg)):
        ds = add_stage(ds, stage)
    return ds.iter_batches(**BATCH)


def _prepare_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` checked and fitted for the connected cluster (:meth:`RunConfig.for_cluster`), with this run's id.
    The cluster's shape is the one the caller found (``cfg.cluster``: :func:`jobs.runtime.cluster_shape`, which knows
    whether an autoscaler can grow it), else the connected cluster as it is now, taken as static."""
    import ray

    shape = cfg.cluster or ClusterShape.static(sum(1 for n in ray.nodes() if n.get("Alive")),
                                               float(ray.cluster_resources().get("CPU", 1.0)))
    cfg = cfg.for_cluster(shape)
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


def triage(man: Manifest, cfg: RunConfig, add_result: Callable[[ResultRow], None]) -> list[RequestRow]:
    """Result rows (to ``add_result``) for invalid requests, and for every request when ``--out`` is not writable;
    the rest to do. Nothing is looked up per request here: identities (model, edit parameters, output options, input
    contents: :mod:`pipelines.batch.identity`) and done markers are the plan stage's
    (:func:`~pipelines.batch.stages.plan_row`), so the first window does not wait for the whole manifest's
    metadata calls."""
    for bad in man.invalid:
        add_result(ResultRow.for_invalid(bad))
    out_error = _out_error(cfg)
    if out_error:
        for req in man.requests:
            add_result(ResultRow.for_request(req, FAILED, error=out_error))
        return []
    return [RequestRow(req) for req in man.requests]


def _summary(cfg: RunConfig, results: list[ResultRow], col: RequestCollector) -> RunSummary:
    """The run's figures, once its result manifest is written."""
    ok = [r for r in results if r.status == SUCCEEDED]
    uri = _write_results(results, cfg)
    return RunSummary(actors=cfg.resources.actors, results_uri=uri, resources=cfg.resources.as_dict(),
                      counts=dict(Counter(r.status for r in results)), frames=sum(r.frames or 0 for r in ok),
                      bytes_written=sum(r.bytes_written or 0 for r in ok), **col.figures())


def run_pipeline(cfg: RunConfig, metrics: Optional[PipelineMetrics] = None, progress: Optional[Progress] = None,
                 *, edit_stage: type[EditStage] = EditStage) -> RunSummary:
    """Run a manifest end to end on the current Ray cluster. ``edit_stage``: an :class:`EditStage` subclass (tests
    inject faults there)."""
    cfg = _prepare_config(cfg)
    metrics = metrics or PipelineMetrics()
    metrics.start_run()
    man = read_manifest(cfg.manifest, cfg.out)
    col = RequestCollector(cfg, len(man), metrics, progress)
    todo = triage(man, cfg, col.add_result)
    if todo:
        col.consume(_stream(cfg, todo, edit_stage))
    return _summary(cfg, _sorted_results(col.results, man), col)
