"""JSON pose tracks read within their limits: a sliding window over the file, one bounded value at a time.

:func:`read_json` returns ``(columns, meta)`` like :func:`~pipelines.conditioning.poses.track_parquet.read_parquet`.
The top-level object is walked key by key and ``frames`` element by element, each value decoded by the standard
library (``JSONDecoder.raw_decode`` on at most :data:`~pipelines.conditioning.poses.track_limits.JSON_VALUE_CHARS`
characters), so keys are decoded as any JSON parser decodes them (``"bod\\u0079"`` is ``"body"``) and a known key
given twice is refused; at most ``JSON_CHUNK + JSON_VALUE_CHARS`` characters are held besides the growing arrays.
Every frame is checked as it is read (integers in range, lists in one of the exact shapes, finite keypoints). The
contract: the module docstring of :mod:`pipelines.conditioning.poses.keypoints`. Refusals are
:class:`~pipelines.media.errors.InputError` naming the file and the character position or the frame.
"""
from __future__ import annotations

import codecs
import json
import re

import numpy as np

from pipelines.conditioning.poses.track_limits import JSON_CHUNK, JSON_VALUE_CHARS, PER_ROW, SHAPES, cut, shape_text
from pipelines.media.errors import InputError

_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")


class _Window:
    """A window on a UTF-8 JSON text read in chunks: at most ``JSON_CHUNK + JSON_VALUE_CHARS`` characters held."""

    def __init__(self, fh, uri: str):
        self.fh, self.uri, self.text, self.pos, self.base, self.done = fh, uri, "", 0, 0, False
        self.utf8 = codecs.getincrementaldecoder("utf-8-sig")()

    def _fill(self, n: int) -> None:
        while len(self.text) - self.pos < n and not self.done:
            chunk = self.fh.read(JSON_CHUNK)
            self.done = not chunk
            try:
                more = self.utf8.decode(chunk, final=self.done)
            except UnicodeDecodeError:
                raise InputError(self.uri, "not a pose track: neither Parquet nor UTF-8 JSON") from None
            self.base += self.pos
            self.text, self.pos = self.text[self.pos:] + more, 0

    def fail(self, what: str):
        raise InputError(self.uri, f"not a pose track: JSON at character {self.base + self.pos}: {what}")

    def peek(self) -> str:
        """The next character after whitespace ('' at the end)."""
        while True:
            self._fill(1)
            self.pos = _WS.match(self.text, self.pos).end()
            if self.pos < len(self.text) or self.done:
                return self.text[self.pos:self.pos + 1]

    def take(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            self.fail(f"expected {' or '.join(map(repr, chars))}, found {cut(c) if c else 'the end'}")
        self.pos += 1
        return c

    def value(self, what: str):
        """The next JSON value, decoded by the standard library, refused past ``JSON_VALUE_CHARS`` characters."""
        self.peek()
        self._fill(JSON_VALUE_CHARS + 1)
        try:
            value, end = _DECODER.raw_decode(self.text[self.pos:self.pos + JSON_VALUE_CHARS])
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an int over Python's digit limit
            if len(self.text) - self.pos > JSON_VALUE_CHARS:
                self.fail(f"{what} is longer than {JSON_VALUE_CHARS} characters or not valid JSON")
            self.fail(f"{what}: {getattr(exc, 'msg', type(exc).__name__)}")
        self.pos += end
        return value


def read_json(fh, uri: str, max_frames: int, keep: bool) -> tuple[dict, dict]:
    """Parse a JSON track: the top-level object key by key (``fps``/``width``/``height`` kept, other values
    skipped, a known key twice refused), ``frames`` element by element into :class:`_Rows`."""
    win, rows, meta = _Window(fh, uri), _Rows(keep), {}
    win.take("{")
    if win.peek() == "}":
        win.take("}")
    else:
        while _json_member(win, rows, meta, max_frames) == ",":
            pass
    if win.peek():
        win.fail("data after the pose track object")
    if "frames" not in meta:
        raise InputError(uri, "not a pose track: a JSON object without a 'frames' list")
    return rows.arrays(), meta


def _json_member(win: _Window, rows: _Rows, meta: dict, max_frames: int) -> str:
    """One ``"key": value`` of the top-level object; returns the ``,`` or ``}`` after it."""
    key = win.value("a key")
    if not isinstance(key, str) or key in meta:
        win.fail(f"{'duplicate' if isinstance(key, str) else 'non-string'} key {cut(key)}")
    win.take(":")
    if key == "frames":
        meta[key] = True
        _json_frames(win, rows, max_frames)
    elif key in ("fps", "width", "height"):
        meta[key] = win.value(repr(key))
    else:
        win.value(f"the value of {cut(key)}")
    return win.take(",}")


def _json_frames(win: _Window, rows: _Rows, max_frames: int) -> None:
    """The ``frames`` list, one frame (at most JSON_VALUE_CHARS) at a time, refused past ``max_frames``."""
    win.take("[")
    if win.peek() == "]":
        win.take("]")
        return
    while True:
        if rows.n >= max_frames:
            raise InputError(win.uri, f"pose track holds more than {max_frames} frames")
        rows.add(win.uri, win.value(f"frames[{rows.n}]"))
        if win.take(",]") == "]":
            return


def _int(uri: str, what: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2 ** 31:
        raise InputError(uri, f"{what} must be an integer in [{low}, 2**31), got {cut(value)}")
    return value


def _points(uri: str, what: str, value, name: str) -> np.ndarray:
    """One frame's ``body``/``hands`` as flat float32: numbers in one of the exact SHAPES, all finite."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is None or arr.shape not in SHAPES[name].values() or arr.dtype.kind not in "iuf":
        got = "ragged lists" if arr is None else f"shape {shape_text(arr.shape) or '()'} of {arr.dtype.name}"
        want = " or ".join(map(shape_text, SHAPES[name].values()))
        raise InputError(uri, f"{what} must be {PER_ROW[name]} numbers shaped {want}, got {got}")
    with np.errstate(over="ignore"):
        flat = arr.astype(np.float32).reshape(-1)
    if not np.isfinite(flat).all():
        raise InputError(uri, f"{what} holds non-finite keypoints")
    return flat


class _Rows:
    """Checked JSON frames appended to arrays that double as they fill (keypoints kept only when ``keep``)."""

    def __init__(self, keep: bool):
        kinds = {"frame": ((), np.int64), "flags": ((), np.int32), "body": ((54,), np.float32),
                 "hands": ((126,), np.float32)}
        self.cols = {k: np.empty((64, *s), dt) for k, (s, dt) in kinds.items() if keep or k == "frame"}
        self.n = 0

    def add(self, uri: str, row) -> None:
        i = self.n
        if not isinstance(row, dict) or "body" not in row:
            raise InputError(uri, f"frames[{i}] must be an object with a 'body' list")
        values = {"frame": _int(uri, f"frames[{i}].frame", row.get("frame", i), -2 ** 31),
                  "flags": _int(uri, f"frames[{i}].flags", row.get("flags", 0), 0),
                  "body": _points(uri, f"frames[{i}].body", row["body"], "body"),
                  "hands": _points(uri, f"frames[{i}].hands", row["hands"], "hands") if "hands" in row else 0.0}
        if i == len(self.cols["frame"]):
            self.cols = {k: np.concatenate([a, np.empty_like(a)]) for k, a in self.cols.items()}
        for k, a in self.cols.items():
            a[i] = values[k]
        self.n += 1

    def arrays(self) -> dict:
        return {k: a[:self.n] for k, a in self.cols.items()}
