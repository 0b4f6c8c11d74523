"""Dataset specs (YAML) for scheduled dataset generation: what to pair, how to edit, where to write, when to run.

The format is described in :mod:`jobs.dataset`; :func:`load_spec` reads and validates a spec, and every error names
the file and the field (:class:`DatasetSpecError`). Relative paths in a spec resolve against the spec's folder
(:func:`pipelines.media.storage.resolve`).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from pipelines.batch.config import RunConfig, RunOptions
from pipelines.batch.requests import COLUMNS, parse_row
from pipelines.media import storage

PAIRING_RULES = ("all", "random")
EDIT_KEYS = tuple(c for c in COLUMNS if c not in ("source", "driving", "request_id", "output"))
# the RunOptions a spec's ``run:`` may set (the others keep their defaults)
RUN_KEYS = ("preset", "weights", "dtype", "actors", "prepare_actors", "gpus_per_actor", "max_retries",
            "pose_backend", "crossfade")
PARTITION_PREFIX = "run_date="
GLOB_CHARS = re.compile(r"[*?\[]")
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
class DatasetSpec:
    name: str
    sources: Catalog
    motions: Catalog
    output: str
    pairing: Pairing = field(default_factory=Pairing)
    edit: Mapping[str, Any] = field(default_factory=dict)
    schedule: Optional[str] = None
    run: RunOptions = field(default_factory=RunOptions)  # only RUN_KEYS set from the spec
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
        if len(value) == 1 and not GLOB_CHARS.search(one) and one.lower().endswith(_CATALOG_MANIFEST_EXT):
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
        RunConfig.build(run_opts, manifest="", out="")  # the values checked now, not when the run starts
    except (TypeError, ValueError) as exc:
        raise DatasetSpecError(f"{uri}: field 'run': {exc}") from None
    for key in ("actors", "prepare_actors"):
        _int(f"{uri}: field 'run.{key}'", getattr(run_opts, key), 1)

    return DatasetSpec(name=name, sources=_catalog(f"{uri}: field 'sources'", doc["sources"], base),
                       motions=_catalog(f"{uri}: field 'motions'", doc["motions"], base), output=output,
                       pairing=pairing, edit=dict(edit), schedule=schedule, run=run_opts, uri=uri)


def load_spec(uri: str) -> DatasetSpec:
    """Read a YAML spec from any fsspec URI (a local path is made absolute: the spec's folder anchors its paths)."""
    uri = storage.absolute(uri)
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except FileNotFoundError:
        raise DatasetSpecError(f"{uri}: dataset spec not found") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DatasetSpecError(f"{uri}: not valid YAML: {exc}") from None
    return parse_spec(doc, uri)
