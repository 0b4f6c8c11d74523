"""The driver's end of the Ray Data stream: window tasks in, one result row per request out.

:class:`RequestCollector` takes the edited window tasks as they come out of the last stage (:meth:`~RequestCollector.
consume`), in any order, and groups them per request. A request is complete when ``task.count`` of its windows are
in (``count`` is the request's number of tasks: of windows, or of groups for a fused request, whose tasks
carry several windows each); then one finish task (a Ray core task, ``stitch_cpus`` CPUs and ``max_retries`` retries:
:func:`~pipelines.batch.finish.finish_request`) stitches and encodes it, while the stream goes on. A failed plan
(one task, ``index == PLAN_FAILED``) is finished in the driver at once; a request an earlier run finished (one
task, ``index == REQUEST_DONE``) gives the row the plan stage found. A finish task that dies gives a failed row
(``stitch: ...``); a request whose windows never all came back (rows lost: a bug) a failed row naming the count.

It also keeps what the run reports: the result rows (each with ``seconds_total`` from the run's start), the
metrics and the progress callback (``"window"`` and ``"request"``, ``(kind, done, total)``), the window counts per
status, busy and model seconds, the edit span and the Ray nodes each stage ran on (:meth:`~RequestCollector.figures`,
the :class:`~pipelines.batch.driver.RunSummary` fields it fills).
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Optional

from pipelines.batch.config import RunConfig
from pipelines.batch.finish import finish_request, result_row
from pipelines.batch.identity import RequestIdentity
from pipelines.batch.metrics import PipelineMetrics
from pipelines.batch.requests import Request
from pipelines.batch.results import ResultRow
from pipelines.batch.tasks import WindowTask, error_text, tasks_from_table

Progress = Callable[[str, int, int], None]  # (kind, done, total): "window" and "request"


def finish_remote(cfg: RunConfig) -> Any:
    """:func:`~pipelines.batch.finish.finish_request` as a Ray task of this run's resources and retries."""
    import ray

    return ray.remote(num_cpus=cfg.resources.stitch_cpus, max_retries=cfg.processing.max_retries)(finish_request)


class RequestCollector:
    """See the module docstring. ``total``: the requests of the manifest (the progress bar's total); the bar's
    clock starts here. ``finish``: the finish task (default :func:`finish_remote`)."""

    def __init__(self, cfg: RunConfig, total: int, metrics: PipelineMetrics, progress: Optional[Progress] = None,
                 finish: Any = None) -> None:
        self.cfg, self.total, self.metrics, self.progress = cfg, total, metrics, progress
        self.finish = finish or finish_remote(cfg)
        self.t_start, self.wall_start = time.perf_counter(), time.time()
        self.results: list[ResultRow] = []
        self.pending: dict[str, list[WindowTask]] = defaultdict(list)
        self.futures: dict[Any, tuple[Request, RequestIdentity]] = {}
        self.window_counts: Counter = Counter()
        self.windows_known = self.windows_done = 0
        self.busy = self.model = 0.0
        self.edit_spans: list[tuple[float, float]] = []
        self.nodes: dict[str, set[str]] = defaultdict(set)
        if progress:
            progress("request", 0, total)

    def add_result(self, row: ResultRow) -> None:
        if row.seconds_total is None:  # seconds from the run's start until the request's row is in
            row.seconds_total = time.perf_counter() - self.t_start
        self.results.append(row)
        self.metrics.record_result_row(row)
        if self.progress:
            self.progress("request", len(self.results), self.total)

    def consume(self, batches: Iterable[Any]) -> None:
        """All window tasks of the stream (Arrow batches of ``TASK_SCHEMA``), then every finish task's row."""
        for batch in batches:
            for task in tasks_from_table(batch):
                self.add_task(task)
            self.collect(block=False)
        self.close()

    def add_task(self, task: WindowTask) -> None:
        if task.request_done:  # finished by an earlier run: the plan stage found its row
            self.add_result(task.result)
            return
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
            self.futures[self.finish.remote(self.pending.pop(rid), self.cfg)] = (task.request, task.identity)

    def _record(self, task: WindowTask) -> None:
        t = task.times
        self.metrics.window_finished(task.status, seconds=t.stage_seconds(), edit_seconds=t.model,
                                     busy_seconds=t.busy, gpu_peak_bytes=t.gpu_memory_peak)
        self.metrics.add_busy(t.prepare, "prepare")
        self.metrics.set_queue_depth(self.windows_known - self.windows_done)
        self.window_counts[task.status] += len(task.members)  # windows, whether edited apart or in a group
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
        """The rows of the finish tasks that are done (``block``: of all of them)."""
        import ray

        if not self.futures:
            return
        done, _ = ray.wait(list(self.futures), num_returns=len(self.futures) if block else 1,
                           timeout=None if block else 0)
        for f in done:
            req, identity = self.futures.pop(f)
            try:
                row = ray.get(f)
            except Exception as exc:  # noqa: BLE001 - the finish task itself died (retries exhausted)
                row = result_row(req, identity, "failed", error=f"stitch: {error_text(exc)}")
            self.add_result(row)

    def close(self) -> None:
        self.collect(block=True)
        self.metrics.set_queue_depth(0)
        for tasks in self.pending.values():  # cannot happen unless rows were lost
            self.add_result(result_row(tasks[0].request, tasks[0].identity, "failed",
                                       error=f"only {len(tasks)} of {tasks[0].count} windows came back"))

    def figures(self) -> dict[str, Any]:
        """The run summary's fields this collector knows: windows, busy and model seconds, nodes, edit span."""
        out: dict[str, Any] = dict(windows=dict(self.window_counts), edit_busy_seconds=self.busy,
                                   model_seconds=self.model, nodes=dict(self.nodes),
                                   wall_seconds=time.perf_counter() - self.t_start)
        if self.edit_spans:
            out["first_window_seconds"] = min(e for _, e in self.edit_spans) - self.wall_start
            out["edit_span_seconds"] = max(e for _, e in self.edit_spans) - min(s for s, _ in self.edit_spans)
        return out
