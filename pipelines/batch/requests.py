"""Request manifests (input) and the result manifest (output) of ``mf retarget``.

Request manifest
================
Parquet (``.parquet``/``.pq``), CSV (``.csv``) or JSON Lines (``.jsonl``/``.ndjson``), read through fsspec; the
format is chosen by the extension. One row = one edit request. Columns:

================  ========  ===========================================================================
column            default   meaning
================  ========  ===========================================================================
``source``        required  source video URI (the person whose appearance and background are kept)
``driving``       required  driving motion: a video, a frame folder, or a pose-track file URI
``request_id``    derived   default: uuid5 of source, driving and a hash of the parameters below (given:
                            1-128 of ``A-Za-z0-9._-``, starting with a letter or digit, no ``..``)
``output``        derived   default: ``<out>/videos/<request_id>.mp4``
``steps``         50        sampler steps (the official schedule is exact at 50, scaled otherwise)
``cfg``           3.5       classifier-free guidance scale (>= 0)
``seed``          42        seed of the frame-indexed initial noise (0 <= seed < 2**63)
``camera``        false     camera-movement mode (reconstruction K/V injection)
``window``        24        frames per window (1..32)
``overlap``       8         frames shared by consecutive windows (0 <= overlap < window)
``size``          512       model resolution, square side in pixels (multiple of 8, 64..2048)
``fps``           source    output frame rate; empty = the source's exact rate (rationals like 30000/1001 ok)
``frame_start``   0         first source frame to edit
``frame_end``     all       end (exclusive) of the source frame range
``preview``       false     also write a side-by-side preview (source | target pose | edit)
``length_policy`` ``trim``  source/driving length mismatch: ``trim`` (to the shorter), ``loop``, ``hold``
================  ========  ===========================================================================

Unknown columns make the whole manifest invalid (:class:`ManifestError`, naming the columns and the file). A
missing or empty optional value takes its default. A row with a bad value (type, range, duplicate ``request_id``)
does not stop the run: it becomes an :class:`InvalidRow` (1-based row number, message naming the column), which
the pipeline reports as a ``failed`` result row; ``strict=True`` raises instead. Relative ``source``/``driving``/
``output`` paths are resolved against the manifest's directory.

The result manifest: :mod:`pipelines.batch.results`.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from mf_model.window import MAX_WINDOW_FRAMES, EditOptions
from pipelines.media import storage
from pipelines.media.timeline import LENGTH_POLICIES
from pipelines.windows import ids
from pipelines.windows.planning import DEFAULT_OVERLAP, DEFAULT_WINDOW

REQUIRED_COLUMNS = ("source", "driving")
# request ids name files and folders under --out: no separators, no "..", no "::" (fsspec chaining), no controls
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def valid_request_id(rid: str) -> bool:
    return bool(REQUEST_ID_RE.match(rid)) and ".." not in rid


class ManifestError(ValueError):
    """An invalid manifest (unknown or missing columns, unreadable file) or, with ``strict``, an invalid row."""


@dataclass(frozen=True)
class Request:
    """One validated edit request."""

    request_id: str
    source: str
    driving: str
    output: str
    preview_output: Optional[str] = None
    steps: int = EditOptions.steps
    cfg: float = EditOptions.cfg
    seed: int = EditOptions.seed
    camera: bool = EditOptions.camera
    window: int = DEFAULT_WINDOW
    overlap: int = DEFAULT_OVERLAP
    size: int = 512
    fps: Optional[float] = None
    frame_start: int = 0
    frame_end: Optional[int] = None
    preview: bool = False
    length_policy: str = "trim"
    row: int = 0  # 1-based row number in the manifest

    EDIT_PARAMS = ("steps", "cfg", "seed", "camera", "window", "overlap", "size", "fps", "frame_start",
                   "frame_end", "length_policy")

    def edit_params(self) -> dict[str, Any]:
        """Parameters that change the edited frames (these key the window ids)."""
        return {k: getattr(self, k) for k in self.EDIT_PARAMS}

    def params(self) -> dict[str, Any]:
        return {**self.edit_params(), "preview": self.preview}

    def params_json(self) -> str:
        return ids.canonical_json(self.params())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class InvalidRow:
    """A manifest row that could not become a :class:`Request`."""

    row: int
    request_id: str
    source: Optional[str]
    driving: Optional[str]
    error: str


@dataclass
class Manifest:
    uri: str
    requests: list[Request] = field(default_factory=list)
    invalid: list[InvalidRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.requests) + len(self.invalid)


# --------------------------------------------------------------------------------------------- value coercion

class _RowError(ValueError):
    pass


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip() == "")


def _as_int(col: str, v: Any) -> int:
    if isinstance(v, bool):
        raise _RowError(f"column '{col}': expected an integer, got {v!r}")
    if isinstance(v, int):
        return int(v)
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        return _as_int(col, v.item())
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        s = v.strip()
        try:
            return int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
    raise _RowError(f"column '{col}': expected an integer, got {v!r}")


def _as_float(col: str, v: Any) -> float:
    if isinstance(v, bool):
        raise _RowError(f"column '{col}': expected a number, got {v!r}")
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str):
        s = v.strip()
        try:
            f = float(s) if "/" not in s else float(int(s.split("/")[0]) / int(s.split("/")[1]))
        except (ValueError, ZeroDivisionError):
            raise _RowError(f"column '{col}': expected a number, got {v!r}") from None
    else:
        raise _RowError(f"column '{col}': expected a number, got {v!r}")
    if not math.isfinite(f):
        raise _RowError(f"column '{col}': expected a finite number, got {v!r}")
    return f


_TRUE = {"true", "t", "yes", "y", "1", "on"}
_FALSE = {"false", "f", "no", "n", "0", "off"}


def _as_bool(col: str, v: Any) -> bool:
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise _RowError(f"column '{col}': expected true/false, got {v!r}")


def _as_str(col: str, v: Any) -> str:
    if not isinstance(v, str):
        raise _RowError(f"column '{col}': expected a string, got {v!r}")
    return v.strip()


_COERCE = {
    "request_id": _as_str, "source": _as_str, "driving": _as_str, "output": _as_str, "steps": _as_int,
    "cfg": _as_float, "seed": _as_int, "camera": _as_bool, "window": _as_int, "overlap": _as_int, "size": _as_int,
    "fps": _as_float, "frame_start": _as_int, "frame_end": _as_int, "preview": _as_bool, "length_policy": _as_str,
}
COLUMNS = tuple(_COERCE)


def _check_values(p: dict[str, Any]) -> None:
    def bad(col: str, msg: str) -> None:
        raise _RowError(f"column '{col}': {msg}, got {p[col]!r}")

    if p["request_id"] is not None and not valid_request_id(p["request_id"]):
        bad("request_id", "must be 1-128 letters, digits, '.', '_' or '-', start with a letter or digit and hold "
                          "no '..'")
    if not 1 <= p["steps"] <= 1000:
        bad("steps", "must be in 1..1000")
    if p["cfg"] < 0:
        bad("cfg", "must be >= 0")
    if not 0 <= p["seed"] < 2**63:
        bad("seed", "must be in 0..2**63-1")
    if not 1 <= p["window"] <= MAX_WINDOW_FRAMES:
        bad("window", f"must be in 1..{MAX_WINDOW_FRAMES}")
    if not 0 <= p["overlap"] < p["window"]:
        bad("overlap", f"must be >= 0 and smaller than window ({p['window']})")
    if p["size"] % 8 or not 64 <= p["size"] <= 2048:
        bad("size", "must be a multiple of 8 in 64..2048")
    if p["fps"] is not None and not 0 < p["fps"] <= 1000:
        bad("fps", "must be in (0, 1000]")
    if p["frame_start"] < 0:
        bad("frame_start", "must be >= 0")
    if p["frame_end"] is not None and p["frame_end"] <= p["frame_start"]:
        bad("frame_end", f"must be greater than frame_start ({p['frame_start']})")
    if p["length_policy"] not in LENGTH_POLICIES:
        bad("length_policy", f"must be one of {', '.join(LENGTH_POLICIES)}")
    for col in ("source", "driving"):
        if not p[col]:
            raise _RowError(f"column '{col}' is required and empty")


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Request) if f.default is not dataclasses.MISSING}


def parse_row(raw: Mapping[str, Any], row: int, out: str, base: str = "") -> Request:
    """Validate one raw row into a :class:`Request` (raises ``ValueError`` with a column-naming message)."""
    p: dict[str, Any] = {}
    for col in COLUMNS:
        v = raw.get(col)
        if _missing(v):
            p[col] = _DEFAULTS.get(col)
            if col in REQUIRED_COLUMNS:
                raise _RowError(f"column '{col}' is required and empty")
        else:
            p[col] = _COERCE[col](col, v)
    p["length_policy"] = p["length_policy"].lower()
    _check_values(p)
    p["source"] = storage.resolve(base, p["source"])
    p["driving"] = storage.resolve(base, p["driving"])
    req = Request(request_id="", output="", row=row, **{k: v for k, v in p.items()
                                                       if k not in ("request_id", "output")})
    rid = p["request_id"] or ids.request_id(req.source, req.driving, req.params())
    output = storage.resolve(base, p["output"]) if p["output"] else storage.join(out, "videos", f"{rid}.mp4")
    preview_output = storage.join(out, "previews", f"{rid}.mp4") if req.preview else None
    return dataclasses.replace(req, request_id=rid, output=output, preview_output=preview_output)


# --------------------------------------------------------------------------------------------- reading

def _format_of(uri: str) -> str:
    name = storage.basename(uri).lower()
    for ext, fmt in ((".parquet", "parquet"), (".pq", "parquet"), (".csv", "csv"), (".jsonl", "jsonl"),
                     (".ndjson", "jsonl")):
        if name.endswith(ext):
            return fmt
    raise ManifestError(f"{uri}: unknown manifest format (use .parquet, .csv or .jsonl)")


def read_raw_rows(uri: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and raw row dicts of a manifest file."""
    fmt = _format_of(uri)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise ManifestError(f"{uri}: manifest not found") from None
    try:
        if fmt == "parquet":
            table = pq.read_table(io.BytesIO(data), use_threads=storage.PARQUET_THREADS)
            return list(table.column_names), table.to_pylist()
        if fmt == "csv":
            reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
            rows = list(reader)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            for r in rows:
                if None in r:
                    raise ManifestError(f"{uri}: row {reader.line_num}: more values than columns")
            return cols, [{k.strip(): v for k, v in r.items()} for r in rows]
        cols: list[str] = []
        rows = []
        for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ManifestError(f"{uri}: line {n} is not a JSON object")
            for k in obj:
                if k not in cols:
                    cols.append(k)
            rows.append(obj)
        return cols, rows
    except ManifestError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is a manifest error
        raise ManifestError(f"{uri}: cannot read {fmt} manifest: {type(exc).__name__}: {exc}") from exc


def read_manifest(uri: str, out: str, *, strict: bool = False) -> Manifest:
    """Read and validate a request manifest; ``out`` is the run's output root (for default ``output`` URIs)."""
    cols, rows = read_raw_rows(uri)
    unknown = [c for c in cols if c not in COLUMNS]
    if unknown:
        raise ManifestError(f"{uri}: unknown column(s) {', '.join(repr(c) for c in unknown)}; "
                            f"allowed: {', '.join(COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise ManifestError(f"{uri}: missing required column(s) {', '.join(repr(c) for c in missing)}")
    base = storage.parent(uri)
    man = Manifest(uri=uri)
    seen: dict[str, int] = {}
    for n, raw in enumerate(rows, 1):
        try:
            req = parse_row(raw, n, out, base)
            if req.request_id in seen:
                raise _RowError(f"duplicate request_id {req.request_id!r} (first in row {seen[req.request_id]})")
            seen[req.request_id] = n
            man.requests.append(req)
        except ValueError as exc:
            msg = f"{uri}: row {n}: {exc}"
            if strict:
                raise ManifestError(msg) from exc
            src, drv = raw.get("source"), raw.get("driving")
            given = raw.get("request_id")
            given = given.strip() if isinstance(given, str) else ""
            rid = given if valid_request_id(given) and given not in seen else \
                ids.request_id(str(src), str(drv), {"invalid_row": n, "raw": {k: str(v) for k, v in raw.items()}})
            man.invalid.append(InvalidRow(n, rid, None if src is None else str(src),
                                          None if drv is None else str(drv), msg))
    return man


def write_manifest(rows: Sequence[Mapping[str, Any]], uri: str) -> None:
    """Write request rows as a manifest (format by extension), atomically; for tests and tools."""
    fmt = _format_of(uri)
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([dict(r) for r in rows]), buf)
        storage.atomic_write_bytes(uri, buf.getvalue())
    elif fmt == "csv":
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        s = io.StringIO()
        w = csv.DictWriter(s, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
        storage.atomic_write_text(uri, s.getvalue())
    else:
        storage.atomic_write_text(uri, "".join(json.dumps(dict(r)) + "\n" for r in rows))
