"""Prometheus metrics of the pipeline (prometheus-client), on a private registry.

Ray Data stages run in other processes, so they do not touch these objects: each stage returns its timings in its
output rows, and the driver feeds the rows to :meth:`PipelineMetrics.record_window_row` /
:meth:`PipelineMetrics.record_result_row` as they stream in. The Serve app does the same in its replicas (one
registry and port per process). Names are stable (the Grafana dashboard and the Serve app use them):

==================================  =========  =============  ===============================================
name                                type       labels         meaning
==================================  =========  =============  ===============================================
``mf_requests_total``               counter    ``status``     requests finished (succeeded | failed | skipped)
``mf_windows_total``                counter    ``status``     windows finished (succeeded | failed | skipped)
``mf_frames_total``                 counter    —              output frames written; frames/s = rate()
``mf_frames_per_second``            gauge      —              the driver's running average of this run
``mf_stage_seconds``                histogram  ``stage``      per-stage latency (probe, prepare, edit, write,
                                                              stitch, total)
``mf_edit_seconds``                 histogram  —              model time per window inside the edit actor
``mf_actor_busy_seconds_total``     counter    ``stage``      seconds actors spent working (edit, prepare)
``mf_queue_depth``                  gauge      —              windows waiting for an edit actor
``mf_gpu_memory_peak_bytes``        gauge      —              largest accelerator memory peak seen (0 on CPU)
==================================  =========  =============  ===============================================
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

from pipelines.batch.results import ResultRow
from pipelines.batch.status import STATUSES, SUCCEEDED

log = logging.getLogger(__name__)

STAGES = ("probe", "prepare", "edit", "write", "stitch", "total")
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 600, 1800, 3600)
EDIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600, 1800)

# keys a stage may put in its window rows for the driver to record (result rows are ResultRow: attributes)
ROW_STATUS = "status"
ROW_BUSY = "actor_busy_seconds"
ROW_EDIT = "edit_seconds"
ROW_GPU_PEAK = "gpu_memory_peak_bytes"


class PipelineMetrics:
    """All pipeline metrics on one registry (a fresh private one unless given)."""

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("mf_requests", "Requests finished, by status", ["status"], registry=r)
        self.windows = Counter("mf_windows", "Windows finished, by status", ["status"], registry=r)
        self.frames = Counter("mf_frames", "Output frames written", registry=r)
        self.frames_per_second = Gauge("mf_frames_per_second", "Output frames per second of the current run",
                                       registry=r)
        self.stage_seconds = Histogram("mf_stage_seconds", "Latency of a pipeline stage per item", ["stage"],
                                       buckets=STAGE_BUCKETS, registry=r)
        self.edit_seconds = Histogram("mf_edit_seconds", "Model time per window in the edit actor",
                                      buckets=EDIT_BUCKETS, registry=r)
        self.actor_busy = Counter("mf_actor_busy_seconds", "Seconds actors spent working", ["stage"], registry=r)
        self.queue_depth = Gauge("mf_queue_depth", "Windows waiting for an edit actor", registry=r)
        self.gpu_memory_peak = Gauge("mf_gpu_memory_peak_bytes", "Largest accelerator memory peak seen",
                                     registry=r)
        self._lock = threading.Lock()
        self._gpu_peak = 0.0
        self._run_started: Optional[float] = None
        self._run_frames = 0
        for s in STATUSES:  # export zeros so dashboards see every series from the start
            self.requests.labels(status=s)
            self.windows.labels(status=s)
        for st in STAGES:
            self.stage_seconds.labels(stage=st)

    # -- direct updates ------------------------------------------------------------------------------------------
    def start_run(self) -> None:
        with self._lock:
            self._run_started = time.monotonic()
            self._run_frames = 0
        self.frames_per_second.set(0)

    def observe_stage(self, stage: str, seconds: Optional[float]) -> None:
        if seconds is not None and seconds >= 0:
            self.stage_seconds.labels(stage=stage).observe(float(seconds))

    def add_frames(self, n: int) -> None:
        if n <= 0:
            return
        self.frames.inc(n)
        with self._lock:
            self._run_frames += n
            started = self._run_started
            frames = self._run_frames
        if started is not None:
            elapsed = time.monotonic() - started
            if elapsed > 0:
                self.frames_per_second.set(frames / elapsed)

    def add_busy(self, seconds: Optional[float], stage: str = "edit") -> None:
        if seconds is not None and seconds > 0:
            self.actor_busy.labels(stage=stage).inc(float(seconds))

    def observe_gpu_peak(self, nbytes: Optional[float]) -> None:
        if nbytes is None:
            return
        with self._lock:
            if nbytes > self._gpu_peak:
                self._gpu_peak = float(nbytes)
                self.gpu_memory_peak.set(self._gpu_peak)

    def set_queue_depth(self, n: int) -> None:
        self.queue_depth.set(max(0, int(n)))

    def window_finished(self, status: str, *, seconds: Optional[Mapping[str, float]] = None,
                        edit_seconds: Optional[float] = None, busy_seconds: Optional[float] = None,
                        gpu_peak_bytes: Optional[float] = None) -> None:
        self.windows.labels(status=_status(status)).inc()
        for stage, sec in (seconds or {}).items():
            self.observe_stage(stage, sec)
        if edit_seconds is not None:
            self.edit_seconds.observe(float(edit_seconds))
        self.add_busy(busy_seconds, "edit")
        self.observe_gpu_peak(gpu_peak_bytes)

    def request_finished(self, status: str, *, frames: int = 0,
                         seconds: Optional[Mapping[str, float]] = None) -> None:
        self.requests.labels(status=_status(status)).inc()
        if _status(status) == SUCCEEDED:
            self.add_frames(int(frames or 0))
        for stage, sec in (seconds or {}).items():
            self.observe_stage(stage, sec)

    # -- from pipeline rows --------------------------------------------------------------------------------------
    def record_window_row(self, row: Mapping[str, Any]) -> None:
        """Record an edit-stage output row: ``status``, ``seconds_<stage>``, ``edit_seconds``,
        ``actor_busy_seconds``, ``gpu_memory_peak_bytes`` (all optional but ``status``)."""
        self.window_finished(
            str(row.get(ROW_STATUS, SUCCEEDED)),
            seconds=_stage_seconds(row, exclude=("total",)),
            edit_seconds=_num(row.get(ROW_EDIT)),
            busy_seconds=_num(row.get(ROW_BUSY)),
            gpu_peak_bytes=_num(row.get(ROW_GPU_PEAK)),
        )

    def record_result_row(self, row: ResultRow) -> None:
        """Record a result row: its status, frames and (succeeded) ``seconds_probe/stitch/total``."""
        status = str(row.status)
        secs = {} if status != SUCCEEDED else {
            st: float(v) for st in ("probe", "stitch", "total") if (v := getattr(row, f"seconds_{st}")) is not None}
        self.request_finished(status, frames=int(row.frames or 0), seconds=secs)

    # -- reading -------------------------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The registry in the Prometheus text format (for a ``/metrics`` endpoint)."""
        return generate_latest(self.registry)

    def value(self, name: str, labels: Optional[Mapping[str, str]] = None) -> Optional[float]:
        """A sample value, e.g. ``value("mf_requests_total", {"status": "failed"})``."""
        return self.registry.get_sample_value(name, dict(labels or {}))


def _status(status: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return status


def _num(v: Any) -> Optional[float]:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _stage_seconds(row: Mapping[str, Any], only: tuple = STAGES, exclude: tuple = ()) -> dict[str, float]:
    out = {}
    for st in only:
        if st in exclude:
            continue
        v = _num(row.get(f"seconds_{st}"))
        if v is not None:
            out[st] = v
    return out


_DEFAULT: Optional[PipelineMetrics] = None
_DEFAULT_LOCK = threading.Lock()


def default_metrics() -> PipelineMetrics:
    """This process's :class:`PipelineMetrics` (created on first use, on its own private registry)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = PipelineMetrics()
        return _DEFAULT


def start_metrics_server(port: int, metrics: Optional[PipelineMetrics] = None, addr: str = "0.0.0.0"):
    """Serve ``metrics`` (default: :func:`default_metrics`) on ``http://addr:port/metrics`` in a daemon thread.

    ``port=0`` picks a free port. Returns the HTTP server (``server.server_port``; ``server.shutdown()`` stops it).
    """
    m = metrics or default_metrics()
    server, _thread = start_http_server(int(port), addr=addr, registry=m.registry)
    log.info("metrics on http://%s:%d/metrics", addr, server.server_port)
    return server
