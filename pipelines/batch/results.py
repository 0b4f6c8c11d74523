"""The result manifest of ``mf retarget``: one row per request, written atomically as Parquet.

A row is a :class:`ResultRow` from the stage that makes it until :func:`write_results` turns the rows into Arrow;
:data:`RESULT_SCHEMA` is derived from its fields (:mod:`pipelines.batch.arrow_types`; int32 and non-null columns are
declared on the fields). Its columns, in order:

``request_id`` · ``status`` (``succeeded`` | ``failed`` | ``skipped``; skipped = already finished by an earlier run)
· ``error`` (null unless failed) · ``source`` · ``driving`` · ``output_uri`` · ``preview_uri`` · ``frames`` (frames
written) · ``fps`` (float) · ``fps_rational`` (exact, ``"30000/1001"``) · ``width`` · ``height`` · ``windows`` ·
``fusion`` (the long-video mode that ran: ``crossfade`` | ``fused``; null for a row that never became a request) ·
``source_fps`` (the source's nominal rate) · ``resampled`` (its frames were resampled onto the output rate: a
variable-rate source, or a request's ``fps``) · ``rotation`` (display rotation applied, clockwise degrees) ·
``rescaled`` (non-square pixels made square) · ``tone_mapped`` (HDR source tone-mapped to SDR) ·
``seam_score`` (see :mod:`pipelines.windows.stitch`) · ``seconds_probe`` · ``seconds_prepare`` · ``seconds_edit`` ·
``seconds_stitch`` · ``seconds_total`` · ``model`` (preset/architecture) · ``weights_id`` (hash of the weights) ·
``params_json`` (canonical JSON of the request's parameters) · ``source_identity`` / ``driving_identity`` (content
identities: checksum or ETag, else size and mtime) · ``content_key`` (hash of model, parameters and both identities;
a finished request is skipped on a re-run only while it is unchanged) · ``bytes_written`` (video + preview) ·
``manifest_row`` · ``finished_at`` (UTC).
"""
from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.batch.arrow_types import arrow_field, arrow_schema
from pipelines.batch.requests import InvalidRow, Request
from pipelines.batch.status import FAILED, STATUSES
from pipelines.media import storage


@dataclass
class ResultRow:
    """One row of the result manifest: its fields, in order, are the columns of :data:`RESULT_SCHEMA`. Rows stay
    typed until :func:`write_results`."""

    request_id: str = arrow_field(nullable=False)
    status: str = arrow_field(nullable=False)  # one of STATUSES
    error: Optional[str] = None
    source: Optional[str] = None
    driving: Optional[str] = None
    output_uri: Optional[str] = None
    preview_uri: Optional[str] = None
    frames: Optional[int] = None
    fps: Optional[float] = None
    fps_rational: Optional[str] = None
    width: Optional[int] = arrow_field(pa.int32(), default=None)
    height: Optional[int] = arrow_field(pa.int32(), default=None)
    windows: Optional[int] = arrow_field(pa.int32(), default=None)
    fusion: Optional[str] = None  # the request's long-video mode (Request.fusion)
    source_fps: Optional[float] = None
    resampled: Optional[bool] = None
    rotation: Optional[int] = arrow_field(pa.int32(), default=None)
    rescaled: Optional[bool] = None
    tone_mapped: Optional[bool] = None
    seam_score: Optional[float] = None
    seconds_probe: Optional[float] = None
    seconds_prepare: Optional[float] = None
    seconds_edit: Optional[float] = None
    seconds_stitch: Optional[float] = None
    seconds_total: Optional[float] = None
    model: Optional[str] = None
    weights_id: Optional[str] = None
    params_json: Optional[str] = None
    source_identity: Optional[str] = None  # content identity of the source (checksum/ETag, else size+mtime)
    driving_identity: Optional[str] = None
    content_key: Optional[str] = None  # hash of model, parameters and both identities (pipelines.batch.identity)
    bytes_written: Optional[int] = None  # output video + preview
    manifest_row: Optional[int] = arrow_field(pa.int32(), default=None)
    finished_at: Optional[datetime] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResultRow:
        """A row from :meth:`to_dict`'s keys (an absent one takes its default; an unknown one raises ``ValueError``)."""
        return cls(**_checked(d))

    @classmethod
    def for_request(cls, req: Request, status: str, **kw: Any) -> ResultRow:
        base = dict(source=req.source, driving=req.driving, output_uri=req.output, preview_uri=req.preview_output,
                    params_json=req.params_json(), manifest_row=req.row, fusion=req.fusion)
        base.update(kw)
        return cls(request_id=req.request_id, status=status, **base)

    @classmethod
    def for_invalid(cls, bad: InvalidRow) -> ResultRow:
        return cls(request_id=bad.request_id, status=FAILED, error=bad.error, source=bad.source,
                   driving=bad.driving, manifest_row=bad.row)


RESULT_SCHEMA = arrow_schema(ResultRow)
RESULT_COLUMNS = tuple(RESULT_SCHEMA.names)


def _checked(d: dict[str, Any]) -> dict[str, Any]:
    unknown = set(d) - set(RESULT_COLUMNS)
    if unknown:
        raise ValueError(f"result row has unknown field(s): {', '.join(sorted(unknown))}")
    return d


def _normalise(row: Any) -> dict[str, Any]:
    d = _checked(row.to_dict() if isinstance(row, ResultRow) else dict(row))
    if d.get("status") not in STATUSES:
        raise ValueError(f"result row {d.get('request_id')!r}: status must be one of {STATUSES}, "
                         f"got {d.get('status')!r}")
    if d.get("finished_at") is None:
        d["finished_at"] = datetime.now(timezone.utc)
    if d.get("seam_score") is not None and not math.isfinite(d["seam_score"]):
        d["seam_score"] = None
    return {c: d.get(c) for c in RESULT_COLUMNS}


def results_table(rows: Iterable[Any]) -> pa.Table:
    return pa.Table.from_pylist([_normalise(r) for r in rows], schema=RESULT_SCHEMA)


def write_results(rows: Iterable[Any], uri: str) -> pa.Table:
    """Write result rows (dicts or :class:`ResultRow`) as Parquet with :data:`RESULT_SCHEMA`, atomically."""
    table = results_table(rows)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.atomic_write_bytes(uri, buf.getvalue())
    return table


def read_results(uri: str) -> list[dict[str, Any]]:
    """Rows of a result manifest (empty when it does not exist)."""
    if not storage.exists(uri):
        return []
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)), use_threads=storage.PARQUET_THREADS).to_pylist()
