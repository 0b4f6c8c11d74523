"""Scheduled dataset generation: a YAML spec → pairs of (source, motion) → dated partitions.

A spec::

    name: dance-pairs
    sources: s3://mf-data/sources/*.mp4          # a URI glob, a list of globs, or {manifest: URI, column: uri}
    motions: {manifest: motions.csv, column: uri}
    pairing: {rule: random, k: 2, seed: 7}       # rule: all (every source × every motion) | random
    edit: {steps: 30, size: 512, window: 24, overlap: 8}   # request-manifest columns (docs/manifests.md)
    output: s3://mf-data/datasets/dance-pairs
    schedule: "0 3 * * *"                        # cron (UTC), for `mf dataset schedule` and the RayCronJob
    run: {preset: tiny, actors: 1, prepare_actors: 1}     # pipeline options (the `mf retarget` run options)

``mf dataset run SPEC [--date D]`` lists both catalogs, pairs them, and keeps the pairs *not produced yet*: a pair's
request id is deterministic (uuid5 of source, motion and the edit parameters, exactly the id ``mf retarget`` derives),
and a pair is produced when some ``<output>/run_date=*/results.parquet`` has it as ``succeeded`` or ``skipped``.
The new pairs (plus the pairs already in that date's partition, which the pipeline then skips) are written to
``<output>/run_date=D/requests.parquet`` and run through the pipeline into ``<output>/run_date=D/`` (videos/,
results.parquet). With nothing new, nothing is written and Ray is not even started.

Pairing ``random`` picks, for each source, the ``k`` motions with the smallest ``sha256(seed|source|motion)``
(rendezvous hashing): a source's picks depend only on the seed, that source and the motion catalog, so adding
sources never changes other sources' pairs, and adding motions replaces a pick only where a new motion ranks higher.
"""
from __future__ import annotations

import hashlib
import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import datetime, timezone
from typing import Any, Optional

from jobs.dataset_spec import (
    GLOB_CHARS,
    PARTITION_PREFIX,
    Catalog,
    DatasetSpec,
    DatasetSpecError,
    Pairing,
    RunOptions,
    load_spec,
    parse_spec,
)
from pipelines.batch.requests import ManifestError, parse_row, read_raw_rows, write_manifest
from pipelines.batch.results import read_results
from pipelines.batch.status import FAILED, PRODUCED, SUCCEEDED
from pipelines.media import storage

log = logging.getLogger(__name__)

REQUESTS_NAME = "requests.parquet"
RESULTS_NAME = "results.parquet"
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# ------------------------------------------------------------------------------------------------------ catalogs

def list_catalog(cat: Catalog, where: str = "catalog") -> list[str]:
    """The catalog's URIs, sorted and de-duplicated."""
    out: set[str] = set()
    if cat.manifest:
        if cat.manifest.lower().endswith(".txt"):
            try:
                lines = storage.read_bytes(cat.manifest).decode("utf-8").splitlines()
            except FileNotFoundError:
                raise DatasetSpecError(f"{where}: catalog {cat.manifest} not found") from None
            values = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        else:
            try:
                cols, rows = read_raw_rows(cat.manifest)
            except ManifestError as exc:
                raise DatasetSpecError(f"{where}: {exc}") from None
            if cat.column not in cols:
                raise DatasetSpecError(f"{where}: catalog {cat.manifest} has no column '{cat.column}' "
                                       f"(columns: {cols})")
            values = [str(r[cat.column]).strip() for r in rows if r.get(cat.column) not in (None, "")]
        base = storage.parent(cat.manifest)
        out |= {storage.resolve(base, v) for v in values}
    for pattern in cat.globs:
        fs, path = storage.open_fs(pattern)
        local = storage.is_local(pattern)
        matches = fs.glob(path) if GLOB_CHARS.search(path) else ([path] if fs.exists(path) else [])
        for m in matches:
            out.add(m if local else fs.unstrip_protocol(m))
    return sorted(out)


def _rank(seed: int, source: str, motion: str) -> str:
    return hashlib.sha256(f"{seed}|{source}|{motion}".encode()).hexdigest()


def pair(sources: list[str], motions: list[str], pairing: Pairing) -> list[tuple[str, str]]:
    """(source, motion) pairs in a deterministic order (see the module docstring for ``random``)."""
    pairs: list[tuple[str, str]] = []
    for s in sorted(set(sources)):
        ms = sorted(set(motions))
        if pairing.rule == "random":
            ms = sorted(sorted(ms, key=lambda m: _rank(pairing.seed, s, m))[:pairing.k])
        pairs += [(s, m) for m in ms]
    return pairs


def build_requests(spec: DatasetSpec, pairs: list[tuple[str, str]], day: str) -> list[dict[str, Any]]:
    """Request-manifest rows (explicit ``request_id``) for ``pairs`` in the partition of ``day``."""
    part = spec.partition(day)
    rows = []
    for n, (s, m) in enumerate(pairs, 1):
        req = parse_row({"source": s, "driving": m, **spec.edit}, n, part)
        rows.append({"request_id": req.request_id, "source": s, "driving": m, **spec.edit})
    return rows


def partitions(spec: DatasetSpec) -> list[str]:
    """Dates of the existing ``run_date=`` partitions, sorted."""
    fs, path = storage.open_fs(spec.output)
    if not fs.exists(path):
        return []
    days = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(PARTITION_PREFIX) and _DATE_RE.match(name[len(PARTITION_PREFIX):]):
            days.append(name[len(PARTITION_PREFIX):])
    return sorted(days)


def produced_ids(spec: DatasetSpec) -> set[str]:
    """Request ids finished (succeeded/skipped) in any partition's results manifest."""
    done: set[str] = set()
    for day in partitions(spec):
        for row in read_results(storage.join(spec.partition(day), RESULTS_NAME)):
            if row.get("status") in PRODUCED:
                done.add(row["request_id"])
    return done


# ------------------------------------------------------------------------------------------------------ run

@dataclass
class DatasetRun:
    """What one ``mf dataset run`` did."""

    date: str
    partition: str
    pairs_total: int = 0
    already_produced: int = 0
    new_pairs: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # result statuses of this run's pipeline (empty: no-op)
    ran_pipeline: bool = False
    wall_seconds: float = 0.0
    new_ids: list[str] = field(default_factory=list)

    @property
    def added(self) -> int:
        """Pairs produced by this run."""
        return self.counts.get(SUCCEEDED, 0)

    @property
    def failed(self) -> int:
        return self.counts.get(FAILED, 0)


def check_date(day: Optional[str]) -> str:
    if day is None:
        return datetime.now(timezone.utc).date().isoformat()
    if isinstance(day, Date):
        return day.isoformat()
    if not _DATE_RE.match(day):
        raise DatasetSpecError(f"--date: expected YYYY-MM-DD, got {day!r}")
    try:
        Date.fromisoformat(day)
    except ValueError as exc:
        raise DatasetSpecError(f"--date: {exc}") from None
    return day


def plan_run(spec: DatasetSpec, day: Optional[str] = None) -> tuple[DatasetRun, list[dict[str, Any]]]:
    """Pairs not produced yet for ``day`` and the partition's request rows (old rows of that date first)."""
    day = check_date(day)
    sources = list_catalog(spec.sources, f"{spec.uri}: field 'sources'")
    motions = list_catalog(spec.motions, f"{spec.uri}: field 'motions'")
    if not sources:
        log.warning("%s: the source catalog is empty", spec.uri)
    if not motions:
        log.warning("%s: the motion catalog is empty", spec.uri)
    rows = build_requests(spec, pair(sources, motions, spec.pairing), day)
    done = produced_ids(spec)
    new = [r for r in rows if r["request_id"] not in done]
    info = DatasetRun(date=day, partition=spec.partition(day), pairs_total=len(rows),
                      already_produced=len(rows) - len(new), new_pairs=len(new),
                      new_ids=[r["request_id"] for r in new])
    req_uri = storage.join(info.partition, REQUESTS_NAME)
    existing: list[dict[str, Any]] = []
    if new and storage.exists(req_uri):  # same date again with new pairs: keep the partition's earlier requests
        _, existing = read_raw_rows(req_uri)
        new_ids = {r["request_id"] for r in new}
        existing = [r for r in existing if r["request_id"] not in new_ids]
    return info, existing + new


def run_dataset(spec: DatasetSpec, day: Optional[str] = None, *, address: Optional[str] = None,
                num_cpus: Optional[int] = None, metrics=None, progress: Optional[Callable] = None,
                preflight: bool = True) -> DatasetRun:
    """Generate the pairs not produced yet into ``run_date=<day>/`` (a no-op, without Ray, when none are new).
    Before the pipeline, a worker checks the partition's requests and a sample of their inputs can be read and the
    partition written (:func:`jobs.preflight.preflight`, unless ``preflight`` is off): ``PreflightError`` (a
    ``RuntimeError`` naming the URI and the error) with nothing run."""
    t0 = time.perf_counter()
    info, rows = plan_run(spec, day)
    log.info("dataset %s, %s: %d pairs, %d produced already, %d new", spec.name, info.date, info.pairs_total,
             info.already_produced, info.new_pairs)
    if not info.new_pairs:
        info.wall_seconds = time.perf_counter() - t0
        return info
    req_uri = storage.join(info.partition, REQUESTS_NAME)
    write_manifest(rows, req_uri)

    from jobs.runtime import cluster_shape, connect_ray, gpus_per_actor
    from pipelines.batch.config import RunConfig
    from pipelines.batch.driver import run_pipeline

    connect_ray(address, num_cpus=num_cpus)
    shape = cluster_shape()
    cfg = RunConfig.build(spec.run, manifest=req_uri, out=info.partition, results_name=RESULTS_NAME,
                          gpus=gpus_per_actor(spec.run.gpus_per_actor, shape), cluster=shape)
    if preflight:
        from jobs.preflight import preflight as check_run

        check_run(cfg, shape)
    summary = run_pipeline(cfg, metrics=metrics, progress=progress)
    info.ran_pipeline = True
    new_ids = set(info.new_ids)
    results = read_results(cfg.results_uri)
    info.counts = dict(_count(r["status"] for r in results if r["request_id"] in new_ids))
    info.wall_seconds = time.perf_counter() - t0
    log.info("dataset %s, %s: %s in %.1fs (pipeline: %s)", spec.name, info.date, info.counts, info.wall_seconds,
             summary.counts)
    return info


def _count(it) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in it:
        out[v] = out.get(v, 0) + 1
    return out


# ------------------------------------------------------------------------------------------------------ schedule

@dataclass
class Scheduler:
    """Runs :func:`run_dataset` at each cron tick of ``spec.schedule`` (UTC) until stopped.

    ``max_runs`` bounds the number of runs (tests, ``--once``); :meth:`stop` (SIGINT/SIGTERM in the CLI) ends the
    wait at once and lets a run in progress finish. A failed run is logged and the schedule goes on.
    """

    spec: DatasetSpec
    max_runs: Optional[int] = None
    run_fn: Callable[..., DatasetRun] = run_dataset
    run_kwargs: dict = field(default_factory=dict)
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    runs: list = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def stop(self, *_: Any) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def next_fire(self, after: datetime) -> datetime:
        from croniter import croniter

        return croniter(self.spec.schedule, after).get_next(datetime)

    def loop(self) -> int:
        if not self.spec.schedule:
            raise DatasetSpecError(f"{self.spec.uri}: field 'schedule' is required for `mf dataset schedule`")
        failures = 0
        fire = self.next_fire(self.now())
        while not self._stop.is_set() and (self.max_runs is None or len(self.runs) < self.max_runs):
            log.info("dataset %s: next run at %s", self.spec.name, fire.isoformat())
            while not self._stop.is_set():
                wait = (fire - self.now()).total_seconds()
                if wait <= 0:
                    break
                self._stop.wait(min(wait, 30.0))
            if self._stop.is_set():
                break
            try:
                self.runs.append(self.run_fn(self.spec, fire.date().isoformat(), **self.run_kwargs))
            except Exception as exc:  # noqa: BLE001 - one bad run never ends the schedule
                failures += 1
                self.runs.append(exc)
                log.error("dataset %s: run for %s failed: %s: %s", self.spec.name, fire.date(),
                          type(exc).__name__, exc)
            fire = self.next_fire(max(fire, self.now()))
        log.info("dataset %s: schedule stopped after %d run(s)", self.spec.name, len(self.runs))
        return 1 if failures and failures == len(self.runs) else 0


def install_signal_handlers(sched: Scheduler) -> None:
    """SIGINT/SIGTERM stop the schedule cleanly (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, sched.stop)
        signal.signal(signal.SIGTERM, sched.stop)


__all__ = ["Catalog", "DatasetRun", "DatasetSpec", "DatasetSpecError", "Pairing", "RunOptions", "Scheduler",
           "build_requests", "list_catalog", "load_spec", "pair", "parse_spec", "plan_run", "produced_ids",
           "run_dataset"]
