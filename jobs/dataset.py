"""Scheduled dataset generation (design §1.2): a YAML spec → pairs of (source, motion) → dated partitions.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import datetime, timezone
from typing import Any, Optional

import yaml

from pipelines.batch.requests import COLUMNS, ManifestError, parse_row, read_raw_rows, write_manifest
from pipelines.batch.results import read_results
from pipelines.media import storage

log = logging.getLogger(__name__)

PAIRING_RULES = ("all", "random")
EDIT_KEYS = tuple(c for c in COLUMNS if c not in ("source", "driving", "request_id", "output"))
RUN_KEYS = ("preset", "weights", "dtype", "actors", "prepare_actors", "gpus_per_actor", "max_retries",
            "pose_backend", "crossfade")
PRODUCED = ("succeeded", "skipped")
PARTITION_PREFIX = "run_date="
REQUESTS_NAME = "requests.parquet"
RESULTS_NAME = "results.parquet"
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_CATALOG_MANIFEST_EXT = (".parquet", ".pq", ".csv", ".jsonl", ".ndjson", ".txt")


class DatasetSpecError(ValueError):
    """An invalid dataset spec or catalog; the message names the file and the field."""


# ------------------------------------------------------------------------------------------------------ spec

@dataclass(frozen=True)
class Catalog:
    """Videos (or motions) from URI globs, or from a manifest file's ``column``."""

    globs: tuple[str, ...] = ()
    manifest: Optional[str] = None
    column: str = "uri"


@dataclass(frozen=True)
class Pairing:
    rule: str = "all"
    k: int = 1
    seed: int = 0


@dataclass(frozen=True)
class RunOptions:
    """Pipeline options of a dataset run (a subset of the ``mf retarget`` run options)."""

    preset: str = "tiny"
    weights: Optional[str] = None
    dtype: Optional[str] = None
    actors: int = 1
    prepare_actors: int = 1
    gpus_per_actor: Optional[float] = None
    max_retries: int = 2
    pose_backend: str = "mediapipe"
    crossfade: bool = True


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    sources: Catalog
    motions: Catalog
    output: str
    pairing: Pairing = field(default_factory=Pairing)
    edit: Mapping[str, Any] = field(default_factory=dict)
    schedule: Optional[str] = None
    run: RunOptions = field(default_factory=RunOptions)
    uri: str = ""  # where the spec was read from

    def partition(self, day: str) -> str:
        return storage.join(self.output, f"{PARTITION_PREFIX}{day}")


def _catalog(where: str, value: Any, base: str) -> Catalog:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise DatasetSpecError(f"{where}: expected a URI glob, a list of globs or {{manifest: URI}}")
        one = value[0]
        if len(value) == 1 and not _GLOB_CHARS.search(one) and one.lower().endswith(_CATALOG_MANIFEST_EXT):
            return Catalog(manifest=storage.resolve(base, one))
        return Catalog(globs=tuple(storage.resolve(base, v) for v in value))
    if isinstance(value, Mapping):
        unknown = set(value) - {"glob", "manifest", "column"}
        if unknown:
            raise DatasetSpecError(f"{where}: unknown keys {sorted(unknown)} (use glob, manifest, column)")
        if ("glob" in value) == ("manifest" in value):
            raise DatasetSpecError(f"{where}: give exactly one of 'glob' or 'manifest'")
        if "glob" in value:
            globs = value["glob"] if isinstance(value["glob"], list) else [value["glob"]]
            if not globs or not all(isinstance(g, str) and g.strip() for g in globs):
                raise DatasetSpecError(f"{where}.glob: expected a URI glob or a list of them")
            return Catalog(globs=tuple(storage.resolve(base, g) for g in globs))
        if not isinstance(value["manifest"], str) or not value["manifest"].strip():
            raise DatasetSpecError(f"{where}.manifest: expected a URI")
        column = value.get("column", "uri")
        if not isinstance(column, str):
            raise DatasetSpecError(f"{where}.column: expected a column name")
        return Catalog(manifest=storage.resolve(base, value["manifest"]), column=column)
    raise DatasetSpecError(f"{where}: expected a URI glob, a list of globs or a mapping, got {type(value).__name__}")


def _int(where: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise DatasetSpecError(f"{where}: expected an integer >= {lo}, got {v!r}")
    return v


def parse_spec(doc: Any, uri: str = "<spec>") -> DatasetSpec:
    """Validate a parsed YAML document into a :class:`DatasetSpec` (errors name ``uri`` and the field)."""
    if not isinstance(doc, Mapping):
        raise DatasetSpecError(f"{uri}: the spec must be a YAML mapping")
    known = {"name", "sources", "motions", "pairing", "edit", "output", "schedule", "run"}
    unknown = set(doc) - known
    if unknown:
        raise DatasetSpecError(f"{uri}: unknown fields {sorted(unknown)} (known: {sorted(known)})")
    for req in ("sources", "motions", "output"):
        if doc.get(req) in (None, "", []):
            raise DatasetSpecError(f"{uri}: field '{req}' is required")
    base = storage.parent(uri) if uri and not uri.startswith("<") else ""
    if not isinstance(doc["output"], str):
        raise DatasetSpecError(f"{uri}: field 'output': expected a URI")
    output = storage.resolve(base, doc["output"]).rstrip("/")
    name = doc.get("name") or storage.basename(output)
    if not isinstance(name, str):
        raise DatasetSpecError(f"{uri}: field 'name': expected a string")

    p = doc.get("pairing") or {"rule": "all"}
    if isinstance(p, str):
        p = {"rule": p}
    if not isinstance(p, Mapping):
        raise DatasetSpecError(f"{uri}: field 'pairing': expected a mapping {{rule, k, seed}}")
    if set(p) - {"rule", "k", "seed"}:
        raise DatasetSpecError(f"{uri}: field 'pairing': unknown keys {sorted(set(p) - {'rule', 'k', 'seed'})}")
    rule = p.get("rule", "all")
    if rule not in PAIRING_RULES:
        raise DatasetSpecError(f"{uri}: field 'pairing.rule': expected one of {PAIRING_RULES}, got {rule!r}")
    if rule == "random" and "k" not in p:
        raise DatasetSpecError(f"{uri}: field 'pairing.k' is required with rule 'random'")
    pairing = Pairing(rule=rule, k=_int(f"{uri}: field 'pairing.k'", p.get("k", 1), 1),
                      seed=_int(f"{uri}: field 'pairing.seed'", p.get("seed", 0), 0))

    edit = doc.get("edit") or {}
    if not isinstance(edit, Mapping):
        raise DatasetSpecError(f"{uri}: field 'edit': expected a mapping of request-manifest columns")
    bad = set(edit) - set(EDIT_KEYS)
    if bad:
        raise DatasetSpecError(f"{uri}: field 'edit': unknown parameters {sorted(bad)} (known: {list(EDIT_KEYS)})")
    try:  # validate the values exactly as the pipeline will
        parse_row({"source": "s", "driving": "d", **edit}, 1, output)
    except ValueError as exc:
        raise DatasetSpecError(f"{uri}: field 'edit': {exc}") from None

    schedule = doc.get("schedule")
    if schedule is not None:
        from croniter import croniter

        if not isinstance(schedule, str) or not croniter.is_valid(schedule):
            raise DatasetSpecError(f"{uri}: field 'schedule': not a valid cron expression: {schedule!r}")

    run = doc.get("run") or {}
    if not isinstance(run, Mapping) or set(run) - set(RUN_KEYS):
        extra = sorted(set(run) - set(RUN_KEYS)) if isinstance(run, Mapping) else run
        raise DatasetSpecError(f"{uri}: field 'run': unknown options {extra} (known: {list(RUN_KEYS)})")
    try:
        run_opts = RunOptions(**run)
    except TypeError as exc:
        raise DatasetSpecError(f"{uri}: field 'run': {exc}") from None
    for key in ("actors", "prepare_actors"):
        _int(f"{uri}: field 'run.{key}'", getattr(run_opts, key), 1)

    return DatasetSpec(name=name, sources=_catalog(f"{uri}: field 'sources'", doc["sources"], base),
                       motions=_catalog(f"{uri}: field 'motions'", doc["motions"], base), output=output,
                       pairing=pairing, edit=dict(edit), schedule=schedule, run=run_opts, uri=uri)


def load_spec(uri: str) -> DatasetSpec:
    """Read a YAML spec from any fsspec URI."""
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except FileNotFoundError:
        raise DatasetSpecError(f"{uri}: dataset spec not found") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DatasetSpecError(f"{uri}: not valid YAML: {exc}") from None
    return parse_spec(doc, uri)


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
        matches = fs.glob(path) if _GLOB_CHARS.search(path) else ([path] if fs.exists(path) else [])
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
        return self.counts.get("succeeded", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)


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
                num_cpus: Optional[int] = None, metrics=None, progress: Optional[Callable] = None) -> DatasetRun:
    """Generate the pairs not produced yet into ``run_date=<day>/`` (a no-op, without Ray, when none are new)."""
    t0 = time.perf_counter()
    info, rows = plan_run(spec, day)
    log.info("dataset %s, %s: %d pairs, %d produced already, %d new", spec.name, info.date, info.pairs_total,
             info.already_produced, info.new_pairs)
    if not info.new_pairs:
        info.wall_seconds = time.perf_counter() - t0
        return info
    req_uri = storage.join(info.partition, REQUESTS_NAME)
    write_manifest(rows, req_uri)

    from jobs.runtime import connect_ray, gpus_per_actor
    from pipelines.batch.config import ModelSpec, ProcessingOptions, RunConfig, StageResources
    from pipelines.batch.driver import run_pipeline

    connect_ray(address, num_cpus=num_cpus)
    o = spec.run
    gpus = gpus_per_actor(o.gpus_per_actor)
    cfg = RunConfig(manifest=req_uri, out=info.partition, results_name=RESULTS_NAME,
                    model=ModelSpec.for_gpus(gpus, weights=o.weights, preset=o.preset, dtype=o.dtype),
                    resources=StageResources(actors=o.actors, gpus_per_actor=gpus, prepare_actors=o.prepare_actors),
                    processing=ProcessingOptions(max_retries=o.max_retries, crossfade=o.crossfade,
                                                 pose_backend=o.pose_backend))
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
