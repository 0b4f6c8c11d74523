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
"""
from __future__ import annotations

import io
import json
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


def _from_rows(uri, frames, body, hands, flags, width, height, fps) -> PoseTrack:
    order = np.argsort(frames)
    frames = np.asarray(frames)[order]
    if len(frames) == 0:
        raise InputError(uri, "pose track holds no frames")
    if not np.array_equal(frames, np.arange(frames[0], frames[0] + len(frames))):
        raise InputError(uri, "pose track frames are not contiguous")
    try:
        body = np.asarray(body, np.float32)[order].reshape(-1, 18, 3)
        hands = np.asarray(hands, np.float32)[order].reshape(-1, 2, 21, 3)
    except ValueError:
        raise InputError(uri, "pose track rows must hold 54 body and 126 hand values") from None
    if not np.isfinite(body).all() or not np.isfinite(hands).all():
        raise InputError(uri, "pose track holds non-finite keypoints")
    return PoseTrack(body, hands, np.asarray(flags, np.int32)[order], (int(height), int(width)), float(fps))


def read_pose_track(uri: str) -> PoseTrack:
    """Read a pose-track file written by :func:`write_pose_track` (Parquet or JSON)."""
    import fsspec

    uri = str(uri)
    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(uri, "pose track file not found") from None
    if not data:
        raise InputError(uri, "pose track file is empty (0 bytes)")
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        try:
            t = pq.read_table(io.BytesIO(data), use_threads=storage.PARQUET_THREADS)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
            raise InputError(uri, f"unreadable Parquet pose track: {exc}") from None
        meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
        missing = {"body", "hands"} - set(t.column_names)
        if missing:
            raise InputError(uri, f"pose track lacks columns {sorted(missing)}")
        n = t.num_rows
        frames = t.column("frame").to_numpy() if "frame" in t.column_names else np.arange(n)
        flags = t.column("flags").to_numpy() if "flags" in t.column_names else np.zeros(n, np.int32)
        body = np.stack([np.asarray(v, np.float32) for v in t.column("body").to_pylist()]) if n else []
        hands = np.stack([np.asarray(v, np.float32) for v in t.column("hands").to_pylist()]) if n else []
        if "width" not in meta or "height" not in meta:
            raise InputError(uri, "pose track lacks width/height metadata")
        return _from_rows(uri, frames, body, hands, flags, meta["width"], meta["height"], float(meta.get("fps", 0)))
    try:
        doc = json.loads(data.decode("utf-8"))
        rows = doc["frames"]
        return _from_rows(uri, [r.get("frame", i) for i, r in enumerate(rows)], [r["body"] for r in rows],
                          [r.get("hands", [0.0] * 126) for r in rows], [r.get("flags", 0) for r in rows],
                          doc["width"], doc["height"], float(doc.get("fps", 0)))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(uri, f"not a pose track (Parquet or JSON with frames/body/hands/width/height): {exc}") \
            from None


JSON_FPS = re.compile(rb'"fps"\s*:\s*(-?[0-9.eE+-]+)')
HEADER_CHUNK = 1 << 20


def pose_track_header(uri: str) -> tuple[int, float]:
    """``(frames, fps)`` of a pose-track file without materialising its rows: the Parquet footer (row count and
    schema metadata), or a streamed scan of a JSON track (its ``fps`` and the number of ``"body"`` entries), in
    memory bounded by one chunk. Raises :class:`InputError` when it is unreadable or its fps is not positive."""
    fs, path = storage.open_fs(uri)
    try:
        with fs.open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(0)
            frames, fps = _parquet_header(fh, uri) if head == b"PAR1" else _json_header(fh)
    except FileNotFoundError:
        raise InputError(uri, "pose track file not found") from None
    if not fps or not np.isfinite(fps) or fps <= 0:
        raise InputError(uri, f"pose track fps must be positive, got {fps!r}")
    if frames <= 0:
        raise InputError(uri, "pose track holds no frames")
    return frames, fps


def _parquet_header(fh, uri: str) -> tuple[int, float]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(fh)
        meta = {k.decode(): v.decode() for k, v in (pf.schema_arrow.metadata or {}).items()}
        return int(pf.metadata.num_rows), float(meta.get("fps", 0) or 0)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        raise InputError(uri, f"unreadable Parquet pose track: {type(exc).__name__}") from None


def _json_header(fh) -> tuple[int, float]:
    frames, fps, tail = 0, None, b""
    while chunk := fh.read(HEADER_CHUNK):
        data = tail + chunk
        frames += data.count(b'"body"') - tail.count(b'"body"')
        if fps is None and (m := JSON_FPS.search(data)):
            fps = float(m.group(1))
        tail = data[-16:]
    return frames, fps or 0.0
