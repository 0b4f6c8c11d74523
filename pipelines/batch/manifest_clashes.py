"""Output clashes: no two manifest rows write one file, and no row overwrites an input or the manifest.

:func:`clash_reasons` takes the rows that are valid otherwise and returns, for each row that may not run, why (the
column, the file, and the other rows or the input it collides with); :func:`uri_key` is the normalised spelling
URIs are compared by. The rule itself ("Outputs") is part of the manifest contract in the module docstring of
:mod:`pipelines.batch.requests`, which turns each reason into a failed row.
"""
from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from typing import Optional, Protocol

from pipelines.batch.manifest_limits import show

_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "local": "file"}


class Writer(Protocol):
    """What a clash check reads of a row (a :class:`~pipelines.batch.requests.Request`)."""

    row: int
    source: str
    driving: str
    output: str
    preview_output: Optional[str]


def uri_key(uri: str) -> str:
    """A URI normalised for comparison: local paths (``file://``/``file:`` prefix stripped) absolute and
    ``os.path.normpath``-ed; other URIs with the scheme lower-cased (aliases folded: ``s3a`` = ``s3``, ``gcs`` =
    ``gs``) and repeated slashes, ``.`` and ``..`` folded (two spellings of one object compare equal; the folding may
    only make distinct keys compare equal, which fails a row, never lets two rows write one file)."""
    u = str(uri).strip()
    scheme, sep, rest = u.partition("://")
    scheme = _SCHEME_ALIASES.get(scheme.lower(), scheme.lower()) if sep else ""
    if not sep and u.lower().startswith("file:"):
        scheme, rest = "file", u[5:]
    if scheme in ("", "file"):
        return os.path.normpath(os.path.abspath(rest if scheme else u))
    return f"{scheme}://{posixpath.normpath('/' + re.sub('/+', '/', rest)).lstrip('/')}"


def _writes(r: Writer) -> list[tuple[str, str]]:
    return [("output", r.output)] + ([("preview", r.preview_output)] if r.preview_output else [])


def _input_name(col: str, row: int, me: int) -> str:
    return "the manifest itself" if col == "manifest" else f"its own {col}" if row == me else \
        f"the {col} of row {row}"


def _inputs(uri: str, reqs: Sequence[Writer]) -> dict[str, tuple[str, int]]:
    """Key -> (column, first row) of every input file, the manifest itself as ``("manifest", 0)``."""
    inputs: dict[str, tuple[str, int]] = {uri_key(uri): ("manifest", 0)}
    for r in reqs:
        for col in ("source", "driving"):
            inputs.setdefault(uri_key(getattr(r, col)), (col, r.row))
    return inputs


def _clash(r: Writer, col: str, out: str, inputs: dict[str, tuple[str, int]], writers: dict[str, list[int]]
           ) -> Optional[str]:
    """Why row ``r`` may not write ``out`` (its ``col``: ``output`` or ``preview``), or None."""
    key, what = uri_key(out), "output" if col == "output" else "preview output"
    others = sorted({n for n in writers[key] if n != r.row})
    own = {uri_key(r.driving): ("driving", r.row), uri_key(r.source): ("source", r.row)}
    if key in inputs:  # the row's own input named first
        name = _input_name(*own.get(key, inputs[key]), r.row)
        return f"column '{col}': {what} {show(out)} is {name}: it would be overwritten"
    if others:
        return f"column '{col}': {what} {show(out)} is also written by row(s) {', '.join(map(str, others))}"
    if len(writers[key]) > 1:
        return f"column '{col}': output and preview output are the same file {show(out)}"
    return None


def clash_reasons(uri: str, reqs: Sequence[Writer]) -> dict[int, str]:
    """Row -> why it may not run: its output or preview is another row's (or its own other file), an input of the
    manifest at ``uri``, or the manifest itself. A row's first clash is its reason."""
    inputs = _inputs(uri, reqs)
    writers: dict[str, list[int]] = {}
    for r in reqs:
        for _, out in _writes(r):
            writers.setdefault(uri_key(out), []).append(r.row)
    bad: dict[int, str] = {}
    for r in reqs:
        for col, out in _writes(r):
            reason = _clash(r, col, out, inputs, writers)
            if reason is not None:
                bad.setdefault(r.row, reason)
    return bad
