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

This docstring is the pose-track contract. This module holds the keypoint layout, :class:`PoseTrack`, the writer and
the two readers' entry points (size checks, then Parquet or JSON by the file's first bytes); behind them:
:mod:`~pipelines.conditioning.poses.track_limits` (the limits' values, the checks both formats share),
:mod:`~pipelines.conditioning.poses.track_parquet` (footer, page headers via
:mod:`~pipelines.conditioning.poses.thrift_compact`, bounded columns) and
:mod:`~pipelines.conditioning.poses.track_json` (the streaming bounded JSON reader).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

from pipelines.conditioning.poses.track_json import read_json
from pipelines.conditioning.poses.track_limits import (
    JSON_FRAME_BYTES,
    JSON_VALUE_CHARS,
    MAX_FILE_BYTES,
    MAX_FRAMES,
    checked,
)
from pipelines.conditioning.poses.track_parquet import read_parquet
from pipelines.media import storage
from pipelines.media.errors import InputError
from pipelines.media.geometry import DEFAULT_FIT_MODE

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

    def rescaled(self, size, mode: str = DEFAULT_FIT_MODE) -> PoseTrack:
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


# -- reading: the size checks, then the format's bounded reader ----------------------------------------------------
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
            return read_parquet(fh, uri, size, max_frames, keep)
        cap = min(max_bytes, max_frames * JSON_FRAME_BYTES + JSON_VALUE_CHARS)
        if size > cap:
            raise InputError(uri, f"JSON pose track of {size} bytes exceeds the {cap} byte limit ({max_frames} frames)")
        fh.seek(0)
        return read_json(fh, uri, max_frames, keep)


def read_pose_track(uri: str, *, max_frames: int = MAX_FRAMES, max_bytes: int = MAX_FILE_BYTES) -> PoseTrack:
    """Read a pose-track file written by :func:`write_pose_track` (Parquet or JSON) in memory bounded by its frame
    count (see the module docstring for the limits); :class:`InputError` names the file and the problem."""
    uri = str(uri)
    cols, meta = _scan(uri, max_frames, max_bytes, keep=True)
    order, fps, size = checked(uri, cols, meta, fps_required=False)
    return PoseTrack(cols["body"][order], cols["hands"][order], cols["flags"][order], size, fps)


def pose_track_header(uri: str, *, max_frames: int = MAX_FRAMES,
                      max_bytes: int = MAX_FILE_BYTES) -> tuple[int, float]:
    """``(frames, fps)`` of a pose-track file without keeping its keypoints: Parquet from its footer, page headers
    and ``frame`` column; JSON by the reader's own streamed parse and checks. ``frames`` is the count
    :func:`read_pose_track` produces; :class:`InputError` for an unusable file, or fps missing, zero or not in
    (0, 1000]."""
    uri = str(uri)
    cols, meta = _scan(uri, max_frames, max_bytes, keep=False)
    _, fps, _ = checked(uri, cols, meta, fps_required=True)
    return len(cols["frame"]), fps
