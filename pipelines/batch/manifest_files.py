"""Manifest files: the format by extension, a capped read, and CSV / JSON Lines / Parquet rows in and out.

:func:`read_rows` returns a file's column names (as written, in order, repeats kept) and its raw row dicts (cells
untouched: validating them is :func:`pipelines.batch.requests.parse_row`'s job), plus the rows that could not be
read at all (:data:`RowErrors`; such a row fails alone). Anything that makes the whole file unreadable is a
:class:`~pipelines.batch.manifest_limits.ManifestError` naming the file, its reason cut to one short line. The
limits applied here (file size, CSV cell size, JSON integers kept as text past a cell's cap) and the formats are
specified in the module docstring of :mod:`pipelines.batch.requests`.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.batch.manifest_limits import CSV_FIELD_LIMIT, MAX_MANIFEST_BYTES, MAX_VALUE_CHARS, ManifestError, clip
from pipelines.media import storage

RowErrors = dict[int, str]  # 1-based row -> why it cannot be read (the row fails alone)
Rows = tuple[list[str], list[dict[str, Any]], RowErrors]
_FORMATS = ((".parquet", "parquet"), (".pq", "parquet"), (".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"))


def format_of(uri: str) -> str:
    """``parquet``, ``csv`` or ``jsonl``, by the file name's extension (any case)."""
    name = storage.basename(uri).lower()
    for ext, fmt in _FORMATS:
        if name.endswith(ext):
            return fmt
    raise ManifestError(f"{uri}: unknown manifest format (use .parquet, .csv or .jsonl)")


def _read_capped(uri: str) -> bytes:
    """The manifest's bytes; refused over :data:`MAX_MANIFEST_BYTES` (by its size first, when the storage says)."""
    fs, path = storage.open_fs(uri)
    try:
        size = fs.size(path)
        if size is None or size <= MAX_MANIFEST_BYTES:
            with fs.open(path, "rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)
            size = len(data)
    except FileNotFoundError:
        raise ManifestError(f"{uri}: manifest not found") from None
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{uri}: manifest of {size} bytes is over the {MAX_MANIFEST_BYTES} byte limit: split it")
    return data


def _read_csv(data: bytes) -> Rows:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:  # process-wide; only ever raised, to a bounded value
        csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
    try:
        rows = list(reader)
    except csv.Error as exc:
        if "field larger than field limit" not in str(exc):
            raise
        raise ManifestError(f"line {reader.line_num}: a CSV cell is larger than {CSV_FIELD_LIMIT} bytes") from None
    errors: RowErrors = {}
    for n, r in enumerate(rows, 1):
        extra = r.pop(None, None)  # type: ignore[call-overload]
        if extra is not None:
            errors[n] = f"more values ({len(r) + len(extra)}) than columns ({len(r)})"
    cols = [c.strip() for c in (reader.fieldnames or [])]
    return cols, [{k.strip(): v for k, v in r.items()} for r in rows], errors


class JsonNumber(str):
    """A JSON number kept as its text (too many digits for a cell, or NaN/Infinity): it fails its row, not the file."""


def _json_int(s: str) -> Any:
    return int(s) if len(s) <= MAX_VALUE_CHARS else JsonNumber(s)


def _read_jsonl(data: bytes) -> Rows:
    cols: dict[str, None] = {}
    rows = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line, parse_int=_json_int, parse_constant=JsonNumber)  # NaN/Infinity stay text: they fail
        if not isinstance(obj, dict):
            raise ManifestError(f"line {n} is not a JSON object")
        cols.update(dict.fromkeys(obj))
        rows.append(obj)
    return list(cols), rows, {}


def read_rows(uri: str) -> Rows:
    """``(columns, raw rows, rows that cannot be read)`` of the manifest file at ``uri``."""
    fmt = format_of(uri)
    data = _read_capped(uri)
    try:
        if fmt == "parquet":
            table = pq.read_table(io.BytesIO(data), use_threads=storage.PARQUET_THREADS)
            return list(table.column_names), table.to_pylist(), {}
        return _read_csv(data) if fmt == "csv" else _read_jsonl(data)
    except ManifestError as exc:
        raise ManifestError(f"{uri}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is a manifest error
        reason = clip(" ".join(str(exc).split()))  # one line, cut: reader errors may quote the file
        raise ManifestError(f"{uri}: cannot read {fmt} manifest: {type(exc).__name__}: {reason}") from exc


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    s = io.StringIO()
    w = csv.DictWriter(s, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return s.getvalue()


def write_manifest(rows: Sequence[Mapping[str, Any]], uri: str) -> None:
    """Write request rows as a manifest (format by extension), atomically; for tests and tools."""
    fmt = format_of(uri)
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([dict(r) for r in rows]), buf)
        storage.atomic_write_bytes(uri, buf.getvalue())
    elif fmt == "csv":
        storage.atomic_write_text(uri, _csv_text(rows))
    else:
        storage.atomic_write_text(uri, "".join(json.dumps(dict(r)) + "\n" for r in rows))
