"""The request manifest's size limits, the error that refuses a whole manifest, and how untrusted values are quoted.

The contract (what each limit bounds and what going over it does: the row fails, or the file is refused) is the
module docstring of :mod:`pipelines.batch.requests`; this module only holds the numbers and the two helpers every
manifest module quotes values with: :func:`show` (one value, cut to :data:`PREVIEW_CHARS`) and :func:`clip` (a
message from a reader, cut). Nothing here imports the rest of the package.
"""
from __future__ import annotations

import reprlib
from typing import Any

MAX_MANIFEST_BYTES = 1 << 30  # a larger manifest is refused before it is read
CSV_FIELD_LIMIT = 16 << 20  # csv.field_size_limit while reading (the default, 128 KiB, refuses the whole file)
MAX_TEXT_CHARS = 64 << 10  # per cell of the text columns (URIs, ids); larger fails the row
MAX_VALUE_CHARS = 64  # per cell of every other column (numbers, booleans, length_policy)
PREVIEW_CHARS = 80  # untrusted values quoted in an error are cut to this


class ManifestError(ValueError):
    """An invalid manifest (unknown or missing columns, unreadable file) or, with ``strict``, an invalid row."""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = PREVIEW_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def show(v: Any) -> str:
    """``repr(v)`` of an untrusted value, cut to about :data:`PREVIEW_CHARS` with an ellipsis and the length."""
    if not isinstance(v, (str, bytes)):
        r = _REPR.repr(v)
        return r if len(r) <= PREVIEW_CHARS else f"{r[:PREVIEW_CHARS]}…"
    head = v[:PREVIEW_CHARS]
    while len(repr(head)) > PREVIEW_CHARS + 2:  # escapes (\x00, \u2028) widen the repr
        head = head[:len(head) * 3 // 4]
    if len(head) == len(v):
        return repr(v)
    return f"{head!r}… ({len(v)} {'characters' if isinstance(v, str) else 'bytes'})"


def clip(text: str, n: int = 4 * PREVIEW_CHARS) -> str:
    """``text`` cut to ``n`` characters, with its original length."""
    return text if len(text) <= n else f"{text[:n]}… ({len(text)} characters)"
