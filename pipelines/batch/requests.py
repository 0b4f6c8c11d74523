"""Request manifests (input) and the result manifest (output) of ``mf retarget``.

Request manifest
================
Parquet (``.parquet``/``.pq``), CSV (``.csv``) or JSON Lines (``.jsonl``/``.ndjson``), read through fsspec; the
format is chosen by the extension. One row = one edit request. Columns:

================  ===========  ===========================================================================
column            default      meaning
================  ===========  ===========================================================================
``source``        required     source video URI (the person whose appearance and background are kept)
``driving``       required     driving motion: a video, a frame folder, or a pose-track file URI
``request_id``    derived      default: uuid5 of source, driving and a hash of the parameters below (given:
                               1-128 of ``A-Za-z0-9._-``, starting with a letter or digit, no ``..``)
``output``        derived      default: ``<out>/videos/<request_id>.mp4``
``steps``         50           sampler steps (the official schedule is exact at 50, scaled otherwise)
``guidance_scale`` 3.5         classifier-free guidance scale (0..100; <= 1 turns guidance off); ``cfg``, its
                               old name, is accepted as an alias (not both in one manifest)
``seed``          42           seed of the frame-indexed initial noise (0 <= seed < 2**63)
``camera``        false        camera-movement mode (reconstruction K/V injection)
``window``        24           frames per window (1..32)
``overlap``       8            frames shared by consecutive windows (0 <= overlap < window)
``size``          512          model resolution, square side in pixels (multiple of 8, 64..2048)
``fps``           source       output frame rate; empty = the source's exact rate (rationals like 30000/1001 ok)
``frame_start``   0            first source frame to edit (0 <= frame_start < 2**63)
``frame_end``     all          end (exclusive) of the source frame range (frame_start < frame_end < 2**63)
``preview``       false        also write a side-by-side preview (source | target pose | edit)
``length_policy`` ``trim``     source/driving length mismatch: ``trim`` (to the shorter), ``loop``, ``hold``
``fusion``        crossfade    long-video mode: ``crossfade`` (windows edited apart, blended in pixels) or
                               ``fused`` (up to 8 consecutive windows denoised together, their shared latents
                               fused after every step, each group on one edit actor; groups are crossfaded)
``align_mode``    similarity   how the driving skeleton is fitted to the source person: ``similarity`` (one
                               scale from the span both people show), ``limbs`` (each limb rescaled to the
                               source's lengths) or ``silhouette`` (whole silhouette heights, the official rule;
                               wrong where the frame cuts one person): see :mod:`pipelines.conditioning.align`
``source_subject`` most        the person to follow where the source shows several: a point ``x,y`` or a box
                  prominent    ``x0,y0,x1,y1`` on the first edited source frame, in the video's displayed
                               pixels (JSON ``[x, y]``, ``{"box": [...]}`` also); followed through the clip
``driving_subject`` most       the same for the driving video (a pose-track driving takes none)
                  prominent
================  ===========  ===========================================================================

Unknown columns, and a column named twice (a CSV or Parquet header), make the whole manifest invalid
(:class:`ManifestError`, naming the columns and the file). A missing or empty optional value takes its default. A
row with a bad value does not stop the run: it becomes an :class:`InvalidRow` (1-based row number, message naming
the column and the problem), which the pipeline reports as a ``failed`` result row; ``strict=True`` raises instead.
Relative ``source``/``driving``/``output`` paths are resolved against the manifest's directory.

Manifests are untrusted input; the rules that keep one bad row to its own row:

- **Sizes.** A manifest over :data:`MAX_MANIFEST_BYTES` (1 GiB) is refused before it is read. A cell over its cap
  fails its row: :data:`MAX_TEXT_CHARS` (64 KiB) for ``source``, ``driving``, ``output`` and ``request_id``,
  :data:`MAX_VALUE_CHARS` (64) for every other column. CSV cells up to :data:`CSV_FIELD_LIMIT` (16 MiB) are read
  (Python's default stops the whole file at 128 KiB); a larger one makes the CSV unreadable (the file is refused).
  A CSV row with more values than columns fails alone. Values quoted in errors are cut to :data:`PREVIEW_CHARS`
  characters, with the original length.
- **Numbers** are written in ASCII (integers: optional sign and digits, or an integral decimal such as ``30.0``;
  numbers: decimal/exponent forms, ``fps`` also ``a/b``), finite (``inf``, ``nan``, JSON ``NaN``/``Infinity`` and
  ``1e400`` fail; a full-width ``１`` fails) and in range; ``guidance_scale`` is at most :data:`MAX_GUIDANCE_SCALE`
  (100). A NaN float in a Parquet float column counts as missing (pandas writes missing values so).
- **Outputs.** No two rows may write the same file: every row whose ``output`` or preview output (after relative
  paths and defaults are resolved) is another row's output or preview fails, naming the other rows; an output or
  preview equal to any ``source`` or ``driving`` in the manifest, or to the manifest itself, fails its row. URIs are
  compared normalised (:func:`uri_key`). Only rows valid otherwise take part (a duplicate ``request_id`` fails first).

This docstring is the manifest contract; the code behind it: this module (the :class:`Request` type, the column
table, value coercion and validation, :func:`parse_row`, :func:`read_manifest`),
:mod:`~pipelines.batch.manifest_limits` (the size limits, :class:`ManifestError`, how values are quoted),
:mod:`~pipelines.batch.manifest_files` (format by extension, capped reading, CSV/JSONL/Parquet rows,
:func:`write_manifest`) and :mod:`~pipelines.batch.manifest_clashes` (the output rules, :func:`uri_key`). The result
manifest: :mod:`pipelines.batch.results`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from mf_model.window import FUSION_MODES, MAX_WINDOW_FRAMES, EditOptions
from pipelines.batch.manifest_clashes import clash_reasons
from pipelines.batch.manifest_files import JsonNumber, read_rows, write_manifest
from pipelines.batch.manifest_limits import MAX_TEXT_CHARS, MAX_VALUE_CHARS, ManifestError, show
from pipelines.conditioning.align import ALIGN_MODES, DEFAULT_ALIGN_MODE
from pipelines.conditioning.poses.keypoints import POSE_TRACK_SUFFIXES
from pipelines.conditioning.poses.subject import SubjectHint
from pipelines.media import storage
from pipelines.media.timeline import DEFAULT_LENGTH_POLICY, LENGTH_POLICIES
from pipelines.windows import ids
from pipelines.windows.planning import DEFAULT_OVERLAP, DEFAULT_WINDOW

# the public names; ManifestError (manifest_limits) and write_manifest (manifest_files) are re-exported: jobs/, the
# batch driver, benchmarks and tests import them from here
__all__ = ["COLUMNS", "COLUMN_ALIASES", "InvalidRow", "Manifest", "ManifestError", "Request", "parse_row",
           "read_manifest", "read_raw_rows", "valid_request_id", "write_manifest"]

REQUIRED_COLUMNS = ("source", "driving")
TEXT_COLUMNS = ("source", "driving", "output", "request_id")
MAX_GUIDANCE_SCALE = 100.0
# request ids name files and folders under --out: no separators, no "..", no "::" (fsspec chaining), no controls
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def valid_request_id(rid: str) -> bool:
    return bool(REQUEST_ID_RE.match(rid)) and ".." not in rid


@dataclass(frozen=True)
class Request:
    """One validated edit request."""

    request_id: str
    source: str
    driving: str
    output: str
    preview_output: Optional[str] = None
    steps: int = EditOptions.steps
    guidance_scale: float = EditOptions.guidance_scale
    seed: int = EditOptions.seed
    camera: bool = EditOptions.camera
    window: int = DEFAULT_WINDOW
    overlap: int = DEFAULT_OVERLAP
    size: int = 512
    fps: Optional[float] = None
    frame_start: int = 0
    frame_end: Optional[int] = None
    preview: bool = False
    length_policy: str = DEFAULT_LENGTH_POLICY
    fusion: str = EditOptions.fusion  # one of mf_model.window.FUSION_MODES
    align_mode: str = DEFAULT_ALIGN_MODE  # one of pipelines.conditioning.align.ALIGN_MODES
    source_subject: Optional[str] = None  # the chosen person: canonical JSON of a SubjectHint (video pixels)
    driving_subject: Optional[str] = None
    row: int = 0  # 1-based row number in the manifest

    EDIT_PARAMS = ("steps", "guidance_scale", "seed", "camera", "window", "overlap", "size", "fps", "frame_start",
                   "frame_end", "length_policy", "fusion", "align_mode", "source_subject", "driving_subject")
    # parameters left out of edit_params() at these values: the ids of requests that predate them stay
    DEFAULT_FREE_PARAMS = (("fusion", EditOptions.fusion), ("align_mode", DEFAULT_ALIGN_MODE),
                           ("source_subject", None), ("driving_subject", None))

    def edit_params(self) -> dict[str, Any]:
        """Parameters that change the edited frames (these key the window ids). Those of
        :data:`DEFAULT_FREE_PARAMS` are in it only away from their defaults: a request that does not use a newer
        column keeps the request id it had before the column."""
        free = dict(self.DEFAULT_FREE_PARAMS)
        return {k: getattr(self, k) for k in self.EDIT_PARAMS if k not in free or getattr(self, k) != free[k]}

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


def _check_size(col: str, v: Any) -> None:
    cap = MAX_TEXT_CHARS if col in TEXT_COLUMNS else MAX_VALUE_CHARS
    if isinstance(v, (str, bytes)) and len(v) > cap:
        unit = "characters" if isinstance(v, str) else "bytes"
        raise _RowError(f"column '{col}': value too large ({len(v)} {unit}, at most {cap}): {show(v)}")


_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_RATIO_RE = re.compile(r"([0-9]+) */ *([0-9]+)")


def _native(v: Any) -> Any:
    return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v


def _as_int(col: str, v: Any) -> int:
    v = _native(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return int(v)
    f = float(v) if isinstance(v, float) else None
    if isinstance(v, str) and _INT_RE.fullmatch(v.strip()):
        return int(v.strip())
    if isinstance(v, str) and _FLOAT_RE.fullmatch(v.strip()):
        f = float(v.strip())
    if f is not None and math.isfinite(f) and f.is_integer():
        return int(f)
    raise _RowError(f"column '{col}': expected a finite integer in ASCII digits (e.g. 50), got {show(v)}")


def _parse_float(s: str) -> Optional[float]:
    if _FLOAT_RE.fullmatch(s):
        return float(s)
    m = _RATIO_RE.fullmatch(s)
    return int(m[1]) / int(m[2]) if m and int(m[2]) else None


def _as_float(col: str, v: Any) -> float:
    v = _native(v)
    f: Optional[float] = None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        f = float(v)
    elif isinstance(v, str):
        f = _parse_float(v.strip())
    if f is None or not math.isfinite(f):
        raise _RowError(f"column '{col}': expected a finite number in ASCII (e.g. 3.5"
                        f"{' or 30000/1001' if col == 'fps' else ''}), got {show(v)}")
    return f


_TRUE = {"true", "t", "yes", "y", "1", "on"}
_FALSE = {"false", "f", "no", "n", "0", "off"}


def _as_bool(col: str, v: Any) -> bool:
    v = _native(v)
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise _RowError(f"column '{col}': expected true/false, got {show(v)}")


def _as_subject(col: str, v: Any) -> Optional[str]:
    """A subject hint (:meth:`SubjectHint.parse`: text, a list of 2 or 4 numbers, a dict) as canonical JSON."""
    try:
        hint = SubjectHint.parse(_native(v) if not hasattr(v, "tolist") else v.tolist())
    except (TypeError, ValueError) as exc:
        raise _RowError(f"column '{col}': {exc}") from None
    return None if hint is None else ids.canonical_json(hint.to_dict())


def _as_str(col: str, v: Any) -> str:
    if not isinstance(v, str) or isinstance(v, JsonNumber):
        raise _RowError(f"column '{col}': expected a string, got {show(v)}")
    return v.strip()


_COERCE = {
    "request_id": _as_str, "source": _as_str, "driving": _as_str, "output": _as_str, "steps": _as_int,
    "guidance_scale": _as_float, "seed": _as_int, "camera": _as_bool, "window": _as_int, "overlap": _as_int,
    "size": _as_int, "fps": _as_float, "frame_start": _as_int, "frame_end": _as_int, "preview": _as_bool,
    "length_policy": _as_str, "fusion": _as_str, "align_mode": _as_str, "source_subject": _as_subject,
    "driving_subject": _as_subject,
}
COLUMNS = tuple(_COERCE)
COLUMN_ALIASES = {"cfg": "guidance_scale"}  # old name → column; a manifest may use either, not both


def _check_values(p: dict[str, Any], names: Mapping[str, str]) -> None:
    def bad(col: str, msg: str) -> None:
        raise _RowError(f"column '{names.get(col, col)}': {msg}, got {show(p[col])}")

    if p["request_id"] is not None and not valid_request_id(p["request_id"]):
        bad("request_id", "must be 1-128 letters, digits, '.', '_' or '-', start with a letter or digit and hold "
                          "no '..'")
    if not 1 <= p["steps"] <= 1000:
        bad("steps", "must be in 1..1000")
    if not 0 <= p["guidance_scale"] <= MAX_GUIDANCE_SCALE:
        bad("guidance_scale", f"must be in 0..{MAX_GUIDANCE_SCALE:g}")
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
    if not 0 <= p["frame_start"] < 2**63:
        bad("frame_start", "must be in 0..2**63-1")
    if p["frame_end"] is not None and not p["frame_start"] < p["frame_end"] < 2**63:
        bad("frame_end", f"must be greater than frame_start ({p['frame_start']}) and below 2**63")
    if p["length_policy"] not in LENGTH_POLICIES:
        bad("length_policy", f"must be one of {', '.join(LENGTH_POLICIES)}")
    if p["fusion"] not in FUSION_MODES:
        bad("fusion", f"must be one of {', '.join(FUSION_MODES)}")
    if p["align_mode"] not in ALIGN_MODES:
        bad("align_mode", f"must be one of {', '.join(ALIGN_MODES)}")
    if p["driving_subject"] is not None and p["driving"].lower().endswith(POSE_TRACK_SUFFIXES):
        bad("driving_subject", "is for a driving video; a pose-track driving holds one person already")
    for col in ("source", "driving"):
        if not p[col]:
            raise _RowError(f"column '{col}' is required and empty")


def _column_names(raw: Mapping[str, Any]) -> dict[str, str]:
    """Column → the name this row gives it (an alias where the row uses one); both names in one row fail it."""
    names = {col: col for col in COLUMNS}
    for alias, col in COLUMN_ALIASES.items():
        if alias in raw:
            if col in raw:
                raise _RowError(f"columns '{alias}' and '{col}' are one column ('{alias}' is its old name): give one")
            names[col] = alias
    return names


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Request) if f.default is not dataclasses.MISSING}


def parse_row(raw: Mapping[str, Any], row: int, out: str, base: str = "") -> Request:
    """Validate one raw row into a :class:`Request` (raises ``ValueError`` with a column-naming message)."""
    p: dict[str, Any] = {}
    names = _column_names(raw)
    for col in COLUMNS:
        name = names[col]
        v = raw.get(name)
        _check_size(name, v)
        if _missing(v):
            p[col] = _DEFAULTS.get(col)
            if col in REQUIRED_COLUMNS:
                raise _RowError(f"column '{col}' is required and empty")
        else:
            p[col] = _COERCE[col](name, v)
    p["length_policy"] = p["length_policy"].lower()
    p["fusion"] = p["fusion"].lower()
    p["align_mode"] = p["align_mode"].lower()
    _check_values(p, names)
    p["source"] = storage.resolve(base, p["source"])
    p["driving"] = storage.resolve(base, p["driving"])
    req = Request(request_id="", output="", row=row, **{k: v for k, v in p.items()
                                                       if k not in ("request_id", "output")})
    rid = p["request_id"] or ids.request_id(req.source, req.driving, req.params())
    output = storage.resolve(base, p["output"]) if p["output"] else storage.join(out, "videos", f"{rid}.mp4")
    preview_output = storage.join(out, "previews", f"{rid}.mp4") if req.preview else None
    return dataclasses.replace(req, request_id=rid, output=output, preview_output=preview_output)


# --------------------------------------------------------------------------------------------- the manifest

def read_raw_rows(uri: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and raw row dicts of a manifest file (any columns; a row that cannot be read refuses the file)."""
    cols, rows, errors = read_rows(uri)
    if errors:
        n = min(errors)
        raise ManifestError(f"{uri}: row {n}: {errors[n]}")
    return cols, rows


def _names(cols: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(show(c) for c in cols[:limit])
    return shown + (f" and {len(cols) - limit} more" if len(cols) > limit else "")


def _check_columns(uri: str, cols: list[str]) -> None:
    unknown = [c for c in dict.fromkeys(cols) if c not in COLUMNS and c not in COLUMN_ALIASES]
    if unknown:
        raise ManifestError(f"{uri}: unknown column(s) {_names(unknown)}; allowed: {', '.join(COLUMNS)} (and "
                            f"{', '.join(f'{a} for {c}' for a, c in COLUMN_ALIASES.items())})")
    both = [f"'{a}' and '{c}'" for a, c in COLUMN_ALIASES.items() if a in cols and c in cols]
    if both:
        raise ManifestError(f"{uri}: columns {', '.join(both)} are one column (the first is its old name): give one")
    twice = [c for c in dict.fromkeys(cols) if cols.count(c) > 1]
    if twice:
        raise ManifestError(f"{uri}: column(s) {_names(twice)} given more than once")
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise ManifestError(f"{uri}: missing required column(s) {', '.join(repr(c) for c in missing)}")


def _fail_clashes(man: Manifest, strict: bool) -> None:
    bad = clash_reasons(man.uri, man.requests)
    for r in man.requests:
        if r.row in bad:
            msg = f"{man.uri}: row {r.row}: {bad[r.row]}"
            if strict:
                raise ManifestError(msg)
            man.invalid.append(InvalidRow(r.row, r.request_id, r.source, r.driving, msg))
    man.requests = [r for r in man.requests if r.row not in bad]
    man.invalid.sort(key=lambda b: b.row)


def _cell_text(v: Any) -> Optional[str]:
    return None if v is None else show(v) if isinstance(v, (str, bytes)) and len(v) > MAX_TEXT_CHARS else str(v)


def _invalid_row(uri: str, n: int, raw: Mapping[str, Any], exc: Exception, seen: Mapping[str, int]) -> InvalidRow:
    src, drv = raw.get("source"), raw.get("driving")
    given = raw.get("request_id")
    given = given.strip() if isinstance(given, str) and len(given) <= MAX_TEXT_CHARS else ""
    rid = given if valid_request_id(given) and given not in seen else \
        ids.request_id(str(src), str(drv), {"invalid_row": n, "raw": {k: str(v) for k, v in raw.items()}})
    return InvalidRow(n, rid, _cell_text(src), _cell_text(drv), f"{uri}: row {n}: {exc}")


def read_manifest(uri: str, out: str, *, strict: bool = False) -> Manifest:
    """Read and validate a request manifest; ``out`` is the run's output root (for default ``output`` URIs)."""
    cols, rows, errors = read_rows(uri)
    _check_columns(uri, cols)
    base = storage.parent(uri)
    man = Manifest(uri=uri)
    seen: dict[str, int] = {}
    for n, raw in enumerate(rows, 1):
        try:
            if n in errors:
                raise _RowError(errors[n])
            req = parse_row(raw, n, out, base)
            if req.request_id in seen:
                raise _RowError(f"duplicate request_id {show(req.request_id)} (first in row {seen[req.request_id]})")
            seen[req.request_id] = n
            man.requests.append(req)
        except ValueError as exc:
            if strict:
                raise ManifestError(f"{uri}: row {n}: {exc}") from exc
            man.invalid.append(_invalid_row(uri, n, raw, exc, seen))
    _fail_clashes(man, strict)
    return man
