"""The keypoint schema and the pose-track file.

A pose track holds, per frame, the OpenPose-18 body and two 21-point hands (OpenPose hand order), each point as
``[x, y, score]`` in pixels of a frame of size ``(height, width)``; ``score == 0`` means "not visible".
Hands are ordered ``[left, right]`` (the person's own left/right).

File format (Parquet, preferred; JSON with the same fields also accepted), one row per frame:

=============  ======================  ===========================================================
column         type                    meaning
=============  ======================  ===========================================================
frame          int32                   frame index (0-based, contiguous)
body           list<float32>[54]       18 x (x, y, score), row-major
hands          list<float32>[126]      2 x 21 x (x, y, score), left hand first
flags          int32                   bit 0 interpolated, bit 1 missing (no person), bit 2 held
=============  ======================  ===========================================================

File-level metadata (Parquet schema metadata / JSON top-level keys): ``mf_pose_version`` ("1"), ``width``,
``height``, ``fps``, ``format`` ("openpose18+hands21").

Reading untrusted tracks
------------------------
Tracks are user input (uploads, manifest entries). :func:`pose_track_header` and :func:`read_pose_track` refuse
with :class:`InputError` (the file and the reason, file values cut to 80 characters) before memory grows with
anything but the frame count:

* A file over ``max_bytes`` (:data:`MAX_FILE_BYTES`, 512 MiB) or with more than ``max_frames`` rows
  (:data:`MAX_FRAMES`, 10**6: about 720 MB of float32 keypoints). A JSON file also over ``max_frames`` times
  :data:`JSON_FRAME_BYTES` (8 KiB a frame; :func:`write_pose_track` writes about 2 KB, pretty-printing about 5 KB).
* Parquet: nothing is decoded before the footer (at most 16 MiB) and the page headers of every column read are
  checked: no column chunk may hold more values than its rows times a frame's (``body`` 54, ``hands`` 126,
  ``frame``/``flags`` 1), nor more than 24 bytes a value once decompressed, neither by the footer's claims
  (``num_values``, ``total_uncompressed_size``) nor by its page headers (the footer can understate; the page headers
  bound what pyarrow decodes). Then each column is read row group by row group into one preallocated array and
  every row's list length is checked (the error names the row and the column).
* JSON is read through a 1 MiB sliding window and parsed by the standard library's decoder one value at a time
  (``JSONDecoder.raw_decode`` on at most 64 KiB: each top-level value, each frame), so keys are decoded like any
  JSON parser decodes them (``"bod\\u0079"`` is ``"body"``) and an oversized row is refused after 64 KiB. The
  header runs the same parse and checks without keeping the keypoints: the count it reports is the reader's.
* ``fps``: a finite number in (0, 1000], the bound manifests use. The header also refuses a missing or zero rate;
  the reader reads it as "unknown" (``fps == 0``: the source's rate is used). ``width``/``height``: integers in
  [1, 65536]. Frames contiguous once sorted; keypoints finite; ``flags`` in [0, 2**31).

Accepted shapes of a row's lists: body ``[54]`` or ``[18][3]``; hands ``[126]``, ``[42][3]`` or ``[2][21][3]``.
"""
from __future__ import annotations

import codecs
import io
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

from pipelines.media import storage
from pipelines.media.errors import InputError

BODY_NAMES = ["nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
              "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear"]
# OpenPose limb pairs (0-based); the first 17 are drawn.
LIMB_SEQ = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
            (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17)]
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]

FLAG_INTERPOLATED = 1
FLAG_MISSING = 2
FLAG_HELD = 4
VERSION = "1"
# the file names read as pose tracks (case-insensitive): a driving input ending otherwise is a video
POSE_TRACK_SUFFIXES = (".parquet", ".json")


@dataclass
class PoseTrack:
    """Keypoints of one person over ``N`` frames, in pixels of a ``size = (H, W)`` frame."""

    body: np.ndarray                    # (N, 18, 3) float32 [x, y, score]
    hands: np.ndarray                   # (N, 2, 21, 3) float32
    flags: np.ndarray                   # (N,) int32 bit field (FLAG_*)
    size: tuple[int, int] = (512, 512)  # (H, W)
    fps: float = 0.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.body = np.asarray(self.body, np.float32).reshape(-1, 18, 3)
        n = len(self.body)
        self.hands = np.asarray(self.hands, np.float32).reshape(n, 2, 21, 3)
        self.flags = np.asarray(self.flags, np.int32).reshape(n)
        self.size = (int(self.size[0]), int(self.size[1]))

    def __len__(self) -> int:
        return len(self.body)

    @classmethod
    def empty(cls, n: int, size=(512, 512), fps: float = 0.0) -> PoseTrack:
        return cls(np.zeros((n, 18, 3), np.float32), np.zeros((n, 2, 21, 3), np.float32),
                   np.full(n, FLAG_MISSING, np.int32), size, fps)

    def take(self, indices) -> PoseTrack:
        idx = np.asarray(list(indices), dtype=np.int64)
        return PoseTrack(self.body[idx].copy(), self.hands[idx].copy(), self.flags[idx].copy(), self.size, self.fps,
                         dict(self.meta))

    @property
    def interpolated(self) -> np.ndarray:
        return (self.flags & FLAG_INTERPOLATED) != 0

    @property
    def missing(self) -> np.ndarray:
        return (self.flags & FLAG_MISSING) != 0

    def rescaled(self, size, mode: str = "pad") -> PoseTrack:
        """The same track expressed in the frame of :func:`pipelines.media.geometry.fit_frame` at ``size``."""
        from pipelines.media.geometry import fit_geometry

        th, tw = (size, size) if isinstance(size, int) else size
        if (th, tw) == self.size:
            return self
        g = fit_geometry(self.size, (th, tw), mode)
        body, hands = self.body.copy(), self.hands.copy()
        for arr in (body, hands):
            arr[..., 0] = arr[..., 0] * g["scale"] + g["ox"]
            arr[..., 1] = arr[..., 1] * g["scale"] + g["oy"]
        return PoseTrack(body, hands, self.flags.copy(), (th, tw), self.fps, dict(self.meta))

    # -- files -------------------------------------------------------------------------------------------------
    def to_table(self):
        import pyarrow as pa

        n = len(self)
        meta = {"mf_pose_version": VERSION, "width": str(self.size[1]), "height": str(self.size[0]),
                "fps": repr(float(self.fps)), "format": "openpose18+hands21"}
        return pa.table({
            "frame": pa.array(np.arange(n, dtype=np.int32)),
            "body": pa.FixedSizeListArray.from_arrays(pa.array(self.body.reshape(-1), pa.float32()), 54),
            "hands": pa.FixedSizeListArray.from_arrays(pa.array(self.hands.reshape(-1), pa.float32()), 126),
            "flags": pa.array(self.flags.astype(np.int32)),
        }).replace_schema_metadata(meta)

    def to_json(self) -> str:
        return json.dumps({"mf_pose_version": VERSION, "format": "openpose18+hands21", "width": self.size[1],
                           "height": self.size[0], "fps": float(self.fps),
                           "frames": [{"frame": i, "body": self.body[i].reshape(-1).round(3).tolist(),
                                       "hands": self.hands[i].reshape(-1).round(3).tolist(),
                                       "flags": int(self.flags[i])} for i in range(len(self))]})


def write_pose_track(track: PoseTrack, uri: str) -> None:
    """Write a pose track to ``uri`` (``.parquet`` or ``.json``; fsspec URIs allowed)."""
    import fsspec

    if str(uri).lower().endswith(".json"):
        with fsspec.open(str(uri), "w") as f:
            f.write(track.to_json())
        return
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(track.to_table(), buf)
    with fsspec.open(str(uri), "wb") as f:
        f.write(buf.getvalue())


# -- reading: limits and checks shared by both formats ------------------------------------------------------------
MAX_FRAMES = 1_000_000
MAX_FILE_BYTES = 512 << 20
JSON_FRAME_BYTES = 8 << 10     # JSON allowance a frame: the size cap is max_frames times this (and max_bytes)
JSON_VALUE_CHARS = 64 << 10    # one JSON frame or top-level value, at most
JSON_CHUNK = 1 << 20
MAX_FOOTER_BYTES = 16 << 20
MAX_PAGES = 100_000            # page headers walked a file, at most
BYTES_PER_VALUE = 24           # decompressed bytes a value may take in a column chunk (PLAIN + dictionary + levels)
MAX_FPS = 1000.0
MAX_SIDE = 1 << 16
PER_ROW = {"frame": 1, "flags": 1, "body": 54, "hands": 126}
SHAPES = {"body": {1: (54,), 2: (18, 3)}, "hands": {1: (126,), 2: (42, 3), 3: (2, 21, 3)}}  # by list depth


def _cut(value, n: int = 80) -> str:
    """``repr(value)`` cut to ``n`` characters: error messages never echo a huge value."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return "<a huge number>"
    return text if len(text) <= n else text[:n - 3] + "..."


def _shape(shape) -> str:
    return "".join(f"[{d}]" for d in shape)


def _fps(uri: str, value, required: bool) -> float:
    """The rate: a finite number in (0, MAX_FPS]; a missing or zero rate is 0.0 ("unknown") unless ``required``."""
    try:
        fps = math.nan if isinstance(value, bool) else 0.0 if value is None else float(value)
    except (TypeError, ValueError):
        fps = math.nan
    if fps == 0 and not required:
        return 0.0
    if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise InputError(uri, f"pose track fps must be positive and at most {MAX_FPS:g}, got {_cut(value)}")
    return fps


def _side(uri: str, meta: dict, key: str) -> int:
    """``meta[key]`` (``width``/``height``) as an integer in [1, MAX_SIDE]."""
    value = meta.get(key)
    if value is None:
        raise InputError(uri, f"pose track lacks {key} metadata")
    integral = isinstance(value, float) and value.is_integer()
    try:
        side = int(value) if integral or isinstance(value, int | str) and not isinstance(value, bool) else 0
    except ValueError:
        side = 0
    if not 1 <= side <= MAX_SIDE:
        raise InputError(uri, f"pose track {key} must be an integer in [1, {MAX_SIDE}], got {_cut(value)}")
    return side


def _checked(uri: str, cols: dict, meta: dict, fps_required: bool):
    """``(order, fps, (H, W))`` of parsed rows: frames contiguous once sorted (``order`` sorts them)."""
    frames = cols["frame"]
    if not len(frames):
        raise InputError(uri, "pose track holds no frames")
    order = slice(None) if bool(np.all(frames[1:] > frames[:-1])) else np.argsort(frames, kind="stable")
    frames = frames[order]
    if not np.array_equal(frames, np.arange(frames[0], frames[0] + len(frames))):
        raise InputError(uri, "pose track frames are not contiguous")
    return order, _fps(uri, meta.get("fps"), fps_required), (_side(uri, meta, "height"), _side(uri, meta, "width"))


def _scan(uri: str, max_frames: int, max_bytes: int, keep: bool) -> tuple[dict, dict]:
    """Open ``uri``, check its size and parse it: ``(columns, meta)``; the columns hold ``frame`` and, when
    ``keep``, ``flags``/``body``/``hands`` as arrays over the file's rows (keypoints flat, float32)."""
    fs, path = storage.open_fs(uri)
    try:
        fh = fs.open(path, "rb")
    except (FileNotFoundError, IsADirectoryError):
        raise InputError(uri, "pose track file not found") from None
    with fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        if not size:
            raise InputError(uri, "pose track file is empty (0 bytes)")
        if size > max_bytes:
            raise InputError(uri, f"pose track of {size} bytes exceeds the {max_bytes} byte limit")
        if fh.read(4) == b"PAR1":
            return _parquet(fh, uri, size, max_frames, keep)
        cap = min(max_bytes, max_frames * JSON_FRAME_BYTES + JSON_VALUE_CHARS)
        if size > cap:
            raise InputError(uri, f"JSON pose track of {size} bytes exceeds the {cap} byte limit ({max_frames} frames)")
        fh.seek(0)
        return _json(fh, uri, max_frames, keep)


def read_pose_track(uri: str, *, max_frames: int = MAX_FRAMES, max_bytes: int = MAX_FILE_BYTES) -> PoseTrack:
    """Read a pose-track file written by :func:`write_pose_track` (Parquet or JSON) in memory bounded by its frame
    count (see the module docstring for the limits); :class:`InputError` names the file and the problem."""
    uri = str(uri)
    cols, meta = _scan(uri, max_frames, max_bytes, keep=True)
    order, fps, size = _checked(uri, cols, meta, fps_required=False)
    return PoseTrack(cols["body"][order], cols["hands"][order], cols["flags"][order], size, fps)


def pose_track_header(uri: str, *, max_frames: int = MAX_FRAMES,
                      max_bytes: int = MAX_FILE_BYTES) -> tuple[int, float]:
    """``(frames, fps)`` of a pose-track file without keeping its keypoints: Parquet from its footer, page headers
    and ``frame`` column; JSON by the reader's own streamed parse and checks. ``frames`` is the count
    :func:`read_pose_track` produces; :class:`InputError` for an unusable file, or fps missing, zero or not in
    (0, 1000]."""
    uri = str(uri)
    cols, meta = _scan(uri, max_frames, max_bytes, keep=False)
    _, fps, _ = _checked(uri, cols, meta, fps_required=True)
    return len(cols["frame"]), fps


# -- JSON: a sliding window, one bounded value at a time -----------------------------------------------------------
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
            self.fail(f"expected {' or '.join(map(repr, chars))}, found {_cut(c) if c else 'the end'}")
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


def _json(fh, uri: str, max_frames: int, keep: bool) -> tuple[dict, dict]:
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
        win.fail(f"{'duplicate' if isinstance(key, str) else 'non-string'} key {_cut(key)}")
    win.take(":")
    if key == "frames":
        meta[key] = True
        _json_frames(win, rows, max_frames)
    elif key in ("fps", "width", "height"):
        meta[key] = win.value(repr(key))
    else:
        win.value(f"the value of {_cut(key)}")
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
        raise InputError(uri, f"{what} must be an integer in [{low}, 2**31), got {_cut(value)}")
    return value


def _points(uri: str, what: str, value, name: str) -> np.ndarray:
    """One frame's ``body``/``hands`` as flat float32: numbers in one of the exact SHAPES, all finite."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is None or arr.shape not in SHAPES[name].values() or arr.dtype.kind not in "iuf":
        got = "ragged lists" if arr is None else f"shape {_shape(arr.shape) or '()'} of {arr.dtype.name}"
        want = " or ".join(map(_shape, SHAPES[name].values()))
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


# -- Parquet: footer and page headers first, then bounded columns --------------------------------------------------
def _parquet(fh, uri: str, size: int, max_frames: int, keep: bool) -> tuple[dict, dict]:
    """Footer, then page headers, then the known columns (only ``frame`` unless ``keep``): ``(columns, meta)``."""
    import pyarrow.parquet as pq

    fh.seek(max(size - 8, 0))
    tail = fh.read(8)
    footer = int.from_bytes(tail[:4], "little")
    if size < 12 or tail[4:] != b"PAR1" or footer + 12 > size:
        raise InputError(uri, "unreadable Parquet pose track: truncated or not Parquet")
    if footer > MAX_FOOTER_BYTES:
        raise InputError(uri, f"Parquet footer of {footer} bytes exceeds the {MAX_FOOTER_BYTES} byte limit")
    try:
        fh.seek(0)
        pf = pq.ParquetFile(fh)
        md, schema = pf.metadata, pf.schema_arrow
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        raise InputError(uri, f"unreadable Parquet pose track: {type(exc).__name__}") from None
    rows = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
    if sum(rows) != md.num_rows or min(rows, default=0) < 0:
        raise InputError(uri, "Parquet row groups disagree with the footer's row count")
    if md.num_rows > max_frames:
        raise InputError(uri, f"pose track holds {md.num_rows} frames, over the {max_frames} frame limit")
    leaves = _parquet_columns(uri, md, schema)
    _check_pages(fh, uri, md, leaves, size - footer - 8)
    meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in (schema.metadata or {}).items()}
    cols = {name: _read_column(uri, pf, name, depth, rows) for name, (_, depth) in leaves.items()
            if keep or name == "frame"}
    cols.setdefault("frame", np.arange(md.num_rows))
    if keep:
        cols.setdefault("flags", np.zeros(md.num_rows, np.int32))
    return cols, meta


def _parquet_columns(uri: str, md, schema) -> dict[str, tuple[int, int]]:
    """``{name: (leaf column index, list depth)}`` of the known columns present: ``frame``/``flags`` integers,
    ``body``/``hands`` lists (nested as in SHAPES) of numbers, one leaf each. Other columns are never read."""
    import pyarrow as pa

    missing = {"body", "hands"} - set(schema.names)
    if missing:
        raise InputError(uri, f"pose track lacks columns {sorted(missing)}")
    leaves = {}
    for i in range(md.num_columns):
        name = md.schema.column(i).path.split(".")[0]
        if name in PER_ROW:
            if name in leaves:
                raise InputError(uri, f"pose track column {name!r} must be one list or integer column")
            leaves[name] = i
    out = {}
    for name, i in leaves.items():
        t = typ = schema.field(name).type
        depth = 0
        while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            t, depth = t.value_type, depth + 1
        depths = SHAPES.get(name, {0: ()})
        if depth not in depths or not (pa.types.is_integer(t) or name in SHAPES and pa.types.is_floating(t)):
            want = " or ".join(f"list{_shape(s)}" for s in depths.values()) if name in SHAPES else "integers"
            raise InputError(uri, f"pose track column {name!r} is {_cut(str(typ))}, expected {want} of numbers")
        out[name] = (i, depth)
    return out


def _check_pages(fh, uri: str, md, leaves: dict, data_end: int) -> None:
    """Refuse, before decoding, a column chunk that could decode to more than its rows' worth of values: by its
    footer claims and by its page headers (the values pyarrow will decode), each at most rows x PER_ROW values."""
    pages = [0]
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for name, (i, _) in leaves.items():
            cc, limit = rg.column(i), rg.num_rows * PER_ROW[name]
            budget = limit * BYTES_PER_VALUE + (64 << 10)
            where = f"row group {g}, column {name!r}"
            claims = [(cc.num_values, cc.total_uncompressed_size, "footer claims")]
            claims += [(*_walk_pages(fh, uri, cc, data_end, pages, where), "page headers claim")]
            for values, raw, source in claims:
                if values > limit or raw > budget:
                    raise InputError(uri, f"{where}: the {source} {values} values ({raw} bytes) for "
                                          f"{rg.num_rows} rows, more than the {PER_ROW[name]} a frame holds")


def _walk_pages(fh, uri: str, cc, data_end: int, pages: list, where: str) -> tuple[int, int]:
    """``(values, decompressed bytes)`` a column chunk's page headers declare (data or dictionary values, the
    larger count); ``pages[0]`` counts the headers read in the file (at most MAX_PAGES)."""
    start = cc.data_page_offset
    if cc.has_dictionary_page and cc.dictionary_page_offset and 0 < cc.dictionary_page_offset < start:
        start = cc.dictionary_page_offset
    end = start + cc.total_compressed_size
    if start < 4 or end > data_end:
        raise InputError(uri, f"{where}: pages outside the file's data")
    counts, raw, pos = [0, 0], 0, start
    while pos < end:
        pages[0] += 1
        if pages[0] > MAX_PAGES:
            raise InputError(uri, f"Parquet pose track has more than {MAX_PAGES} pages")
        header, length = _page_header(fh, uri, pos, end, where)
        kind, usize, csize = header.get(1), header.get(2), header.get(3)
        sub = header.get({0: 5, 2: 7, 3: 8}.get(kind, -1), {}) if kind in (0, 2, 3) else {}
        n = sub.get(1, 0) if isinstance(sub, dict) else -1
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (usize, csize, n)):
            raise InputError(uri, f"{where}: malformed page header at byte {pos}")
        counts[kind == 2] += n
        raw += usize
        pos += length + csize
    return max(counts), raw


def _page_header(fh, uri: str, pos: int, end: int, where: str) -> tuple[dict, int]:
    """The Thrift ``PageHeader`` at ``pos`` (read from 1 KiB, then 64 KiB, never past ``end``) and its length."""
    for n in (1 << 10, 1 << 16):
        fh.seek(pos)
        buf = fh.read(min(n, end - pos))
        try:
            return _thrift(buf, 0, 12)
        except IndexError:
            if len(buf) < n:
                break
        except ValueError:
            break
    raise InputError(uri, f"{where}: unreadable page header at byte {pos}")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("Thrift varint too long")


def _thrift(buf: bytes, pos: int, kind: int, depth: int = 0):
    """One Thrift compact-protocol value of type ``kind`` at ``buf[pos]``: ``(value, end)``. Structs decode to
    ``{field id: value}``, integers and booleans to themselves, the rest is skipped (``None``); IndexError when
    ``buf`` ends first, ValueError when it is not Thrift."""
    if depth > 16 or not 1 <= kind <= 12:
        raise ValueError("not a Thrift page header")
    if kind in (1, 2):
        return kind == 1, pos
    if kind in (4, 5, 6):
        v, pos = _varint(buf, pos)
        return (v >> 1) ^ -(v & 1), pos
    if kind in (3, 7, 8):
        n, pos = (1, pos) if kind == 3 else (8, pos) if kind == 7 else _varint(buf, pos)
        if pos + n > len(buf):
            raise IndexError(pos)
        return None, pos + n
    if kind == 12:
        fields, fid = {}, 0
        while b := buf[pos]:
            pos += 1
            if b >> 4:
                fid += b >> 4
            else:
                v, pos = _varint(buf, pos)
                fid = (v >> 1) ^ -(v & 1)
            fields[fid], pos = _thrift(buf, pos, b & 15, depth + 1)
        return fields, pos + 1
    if kind == 11:  # map
        count, pos = _varint(buf, pos)
        kinds = (buf[pos] >> 4, buf[pos] & 15) if count else ()
        pos += bool(count)
    else:  # list, set
        count, kinds, pos = buf[pos] >> 4, (buf[pos] & 15,), pos + 1
        if count == 15:
            count, pos = _varint(buf, pos)
    if pos + count > len(buf):  # every element takes a byte at least
        raise IndexError(pos)
    for _ in range(count):
        for k in kinds:
            pos = pos + 1 if k in (1, 2) else _thrift(buf, pos, k, depth + 1)[1]
    return None, pos


def _read_column(uri: str, pf, name: str, depth: int, rows: list) -> np.ndarray:
    """Column ``name`` over all row groups, one row group at a time, into one preallocated array: integers
    ``(rows,)`` int64, or keypoints ``(rows, PER_ROW[name])`` float32 with every row's lists checked."""
    out = np.empty((sum(rows), PER_ROW[name]) if name in SHAPES else sum(rows), np.float32 if depth else np.int64)
    start = 0
    for g, k in enumerate(rows):
        try:
            col = pf.read_row_group(g, columns=[name], use_threads=storage.PARQUET_THREADS).column(0).combine_chunks()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
            raise InputError(uri, f"unreadable Parquet pose track (row group {g}, column {name!r}): "
                                  f"{_cut(str(exc))}") from None
        if len(col) != k:
            raise InputError(uri, f"row group {g}, column {name!r}: {len(col)} rows where the footer says {k}")
        out[start:start + k] = _list_rows(uri, col, name, depth, start) if depth else _int_rows(uri, col, name, start)
        start += k
    return out


def _first(uri: str, mask: np.ndarray, first: int, per: int, name: str, what: str) -> None:
    bad = np.flatnonzero(mask)
    if len(bad):
        raise InputError(uri, f"column {name!r}, row {first + int(bad[0]) // per}: {what}")


def _list_rows(uri: str, arr, name: str, depth: int, first: int) -> np.ndarray:
    """A row group's list column as ``(rows, PER_ROW[name])`` float32: every list of every row the exact length
    of SHAPES[name][depth], no nulls, finite; errors name the row (``first`` is the group's first row)."""
    import pyarrow.compute as pc

    shape, per = SHAPES[name][depth], 1
    for length in shape:
        _first(uri, arr.is_null().to_numpy(zero_copy_only=False), first, per, name, "a null list")
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != length)
        if len(bad):
            raise InputError(uri, f"column {name!r}, row {first + int(bad[0]) // per}: a list of {lengths[bad[0]]} "
                                  f"values where {_shape(shape)} belongs")
        arr, per = arr.flatten(), per * length
    _first(uri, arr.is_null().to_numpy(zero_copy_only=False), first, per, name, "a null keypoint value")
    with np.errstate(over="ignore"):
        values = arr.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, per)
    _first(uri, ~np.isfinite(values).all(axis=1), first, 1, name, "non-finite keypoints")
    return values


def _int_rows(uri: str, arr, name: str, first: int) -> np.ndarray:
    """A row group's ``frame``/``flags`` column as int64, no nulls, within int32 (flags non-negative)."""
    _first(uri, arr.is_null().to_numpy(zero_copy_only=False), first, 1, name, "a null value")
    values = arr.to_numpy(zero_copy_only=False)
    low = -2 ** 31 if name == "frame" else 0
    _first(uri, (values < low) | (values >= 2 ** 31), first, 1, name, f"a value outside [{low}, 2**31)")
    return values.astype(np.int64)
