"""Probe and decode source/driving media: video files (anything :mod:`pipelines.media.probe` accepts) or folders
of ``frame_{i}`` images, always as a constant-rate sequence of upright, square-pixel RGB frames.

This is the one normalisation step every path goes through (plan, prepare, ``mf prepare``, the Serve check):
:func:`probe_video` describes an input on its constant-rate grid (:mod:`pipelines.media.timeline`: variable rates
resampled by presentation timestamps, a constant-rate stream untouched), in display geometry (rotation, flips and
the sample aspect ratio applied), and :func:`iter_frames` decodes grid frames through
:class:`pipelines.media.decode.FrameDecoder` (8-bit RGB from any depth and chroma, HDR tone-mapped). Frame indices
everywhere above this module are grid indices.

All paths may be fsspec URIs. Every failure of a bad input surfaces as :class:`pipelines.media.errors.InputError`
naming the file and the reason.

Remote video files (``s3://``, ``gs://``, ``memory://``, ...): the decoder needs a seekable local file, so a remote
video is downloaded once into a per-process cache of local files (:func:`local_video`: the newest
:data:`REMOTE_CACHE_FILES` inputs, keyed by URI and content identity, so a changed object is fetched again): a
worker preparing many windows of one source fetches it once. The cache lives in the system temp directory
(``mf-video-cache-<pid>-*``), is removed at exit, and folders left by dead processes are swept. Probes are cached
per process too (:data:`PROBE_CACHE`, keyed by URI, content identity and grid rate). Frame folders are read image
by image and never cached.
"""
from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from pipelines.media import storage
from pipelines.media.decode import FrameDecoder
from pipelines.media.errors import InputError
from pipelines.media.geometry import DEFAULT_FIT_MODE, fit_frame
from pipelines.media.probe import MediaInfo, probe_media
from pipelines.media.timeline import FpsLike, Timeline, to_fraction

log = logging.getLogger(__name__)

FRAME_RE = re.compile(r"^frame_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
DEFAULT_FOLDER_FPS = 8.0
DECODE_CHUNK = 32
FIT_CHUNK = 4  # source frames decoded at a time by read_fitted_frames
REMOTE_CACHE_FILES = 4  # remote videos kept downloaded per process (see the module docstring)
CACHE_PREFIX = "mf-video-cache-"
PROBE_CACHE = 16  # probes kept per process
SNIFF_BYTES = 4096
STILL_IMAGE = "is a still image, not a video (give a folder of frame_{i} images for frames)"


@dataclass
class VideoInfo:
    """What :func:`probe_video` learns about an input: its constant-rate grid and display geometry."""

    uri: str
    frames: int  # grid frames
    fps: float  # the grid's rate (exactly: ``rate``)
    width: int  # display width: upright, square pixels
    height: int
    has_audio: bool = False
    kind: str = "video"  # "video" | "folder"
    frame_files: list[str] = field(default_factory=list, repr=False)
    timeline: Timeline | None = field(default=None, repr=False)
    media: MediaInfo | None = field(default=None, repr=False)  # videos: the stream as probed

    @property
    def rate(self) -> Fraction:
        return self.timeline.rate if self.timeline is not None else to_fraction(self.fps)

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0

    @property
    def resampled(self) -> bool:
        return bool(self.timeline is not None and self.timeline.resampled)

    @property
    def rotation(self) -> int:
        return self.media.orientation.rotation if self.media is not None else 0

    @property
    def rescaled(self) -> bool:
        return bool(self.media is not None and self.media.rescaled)

    @property
    def tone_mapped(self) -> bool:
        return bool(self.media is not None and self.media.transfer is not None)


def _sniff(fs, path: str, uri: str) -> bytes:
    try:
        size = fs.size(path)
    except FileNotFoundError:
        raise InputError(uri, "file not found") from None
    if size == 0:
        raise InputError(uri, "file is empty (0 bytes)")
    with fs.open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    return head


def _classify_header(head: bytes, uri: str) -> None:
    """Refuse obvious non-videos early with a precise reason. GIF, APNG and animated WebP are videos; a one-frame
    one is refused by the probe."""
    png_still = head[:8] == b"\x89PNG\r\n\x1a\n" and b"acTL" not in head
    webp_still = head[:4] == b"RIFF" and head[8:12] == b"WEBP" and b"ANIM" not in head
    if png_still or webp_still or head[:3] == b"\xff\xd8\xff" or head[:2] == b"BM":
        raise InputError(uri, STILL_IMAGE)
    if head[:3] == b"ID3" or head[:4] in (b"fLaC", b"OggS") and b"vorbis" in head or \
            (head[:4] == b"RIFF" and head[8:12] == b"WAVE"):
        raise InputError(uri, "is an audio file, not a video (no video stream)")
    try:
        text = head.decode("utf-8")
        if text and all(c.isprintable() or c in "\r\n\t" for c in text):
            raise InputError(uri, "is a text file, not a video")
    except UnicodeDecodeError:
        pass


def _is_folder(fs, path: str) -> bool:
    try:
        return fs.isdir(path)
    except Exception:  # noqa: BLE001 - a path the filesystem cannot stat is not a folder
        return False


def _list_frames(fs, path: str, uri: str) -> list[str]:
    items = []
    for p in fs.ls(path, detail=False):
        m = FRAME_RE.match(os.path.basename(str(p).rstrip("/")))
        if m:
            items.append((int(m.group(1)), str(p)))
    if not items:
        raise InputError(uri, "folder holds no frame_{i}.jpg/png images")
    items.sort()
    return [p for _, p in items]


def _load_image(fs, path: str, uri: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with fs.open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path if "://" not in uri else uri, f"cannot read image: {exc}") from None


def _is_local_fs(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


class _RemoteCache:
    """Local copies of remote videos, newest last; at most :data:`REMOTE_CACHE_FILES` per process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.dir: str | None = None
        self.pid = 0

    def _root(self) -> str:
        if self.pid != os.getpid():  # a forked child starts its own cache
            self.files, self.dir, self.pid = OrderedDict(), None, os.getpid()
        if self.dir is None or not os.path.isdir(self.dir):
            base = tempfile.gettempdir()
            _sweep_stale_caches(base)
            self.dir = tempfile.mkdtemp(prefix=f"{CACHE_PREFIX}{os.getpid()}-", dir=base)
            atexit.register(shutil.rmtree, self.dir, True)
        return self.dir

    def get(self, fs, path: str, uri: str) -> str:
        key = (uri, storage.content_identity(uri))
        with self.lock:
            root = self._root()
            hit = self.files.get(key)
            if hit is not None and os.path.exists(hit):
                self.files.move_to_end(key)
                return hit
        fd, tmp = tempfile.mkstemp(prefix="v-", suffix=os.path.splitext(path)[1][:16], dir=root)
        os.close(fd)
        try:
            fs.get_file(path, tmp)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        log.debug("downloaded %s (%d bytes) for decoding", uri, os.path.getsize(tmp))
        with self.lock:
            other = self.files.get(key)
            if other is not None and other != tmp and os.path.exists(other):  # another thread fetched it meanwhile
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                tmp = other
            self.files[key] = tmp
            self.files.move_to_end(key)
            while len(self.files) > REMOTE_CACHE_FILES:
                _, old = self.files.popitem(last=False)
                with contextlib.suppress(OSError):
                    os.unlink(old)  # an open reader keeps reading the unlinked file
        return tmp


def _sweep_stale_caches(base: str) -> None:
    """Remove cache folders whose process is gone (killed workers never run their atexit)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            if not name.startswith(CACHE_PREFIX):
                continue
            pid = name[len(CACHE_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


_REMOTE = _RemoteCache()


def local_video(uri: str) -> str:
    """A local path with the content of the video file ``uri``: the file itself when local, else the cached
    download (see the module docstring). The header is checked first, so an empty, missing or non-video object
    fails with :class:`InputError` before anything is downloaded."""
    fs, path = storage.open_fs(uri)
    head = _sniff(fs, path, uri)
    _classify_header(head, uri)
    if _is_local_fs(fs):
        return path
    return _REMOTE.get(fs, path, str(uri))


class _ProbeCache:
    """Probes of video files, newest last: every window a worker prepares probes its inputs at no cost."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: OrderedDict[tuple, VideoInfo] = OrderedDict()

    def get(self, key: tuple) -> VideoInfo | None:
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
            return hit

    def put(self, key: tuple, info: VideoInfo) -> None:
        with self.lock:
            self.items[key] = info
            while len(self.items) > PROBE_CACHE:
                self.items.popitem(last=False)


_PROBES = _ProbeCache()


def _probe_file(uri: str, rate: FpsLike | None, max_frames: int | None, max_side: int | None) -> VideoInfo:
    local = local_video(uri)
    try:
        media = probe_media(local, max_frames=max_frames, max_side=max_side)
        timeline = media.on_grid(rate, max_frames)
    except InputError as exc:
        raise InputError(uri, exc.reason) from None
    except ValueError as exc:  # a rate that is not positive, a grid over the bound
        raise InputError(uri, str(exc)) from None
    if media.stored_frames == 1:
        still = media.format_name in ("gif", "apng", "webp")
        raise InputError(uri, STILL_IMAGE if still else "holds a single frame (a still image given as a video)")
    if media.transfer is not None:
        log.warning("%s: HDR video (%s transfer): tone-mapped to SDR BT.709", uri, media.transfer.upper())
    return VideoInfo(uri=uri, frames=timeline.frames, fps=float(timeline.rate), width=media.width,
                     height=media.height, has_audio=media.has_audio, kind="video", timeline=timeline, media=media)


def probe_video(uri: str, fps: FpsLike | None = None, max_frames: int | None = None,
                max_side: int | None = None) -> VideoInfo:
    """Grid frames, rate, display size and audio presence of a video file or a ``frame_{i}`` folder.

    ``fps``: the grid's rate: for a video, its frames are resampled to it by presentation timestamps (default: the
    stream's nominal rate); a folder's frames are taken at it (default 8, the official GIF rate). ``max_frames``
    bounds what is counted (stored frames and grid frames), ``max_side`` the stored size (before anything is
    decoded). Raises :class:`InputError` for anything that is not a
    decodable video with at least two frames.
    """
    uri = str(uri)
    fs, path = storage.open_fs(uri)
    if _is_folder(fs, path):
        files = _list_frames(fs, path, uri)
        first = _load_image(fs, files[0], uri)
        rate = to_fraction(fps or DEFAULT_FOLDER_FPS)
        return VideoInfo(uri=uri, frames=len(files), fps=float(rate), width=first.shape[1], height=first.shape[0],
                         has_audio=False, kind="folder", frame_files=files,
                         timeline=Timeline.constant(len(files), rate))
    key = (uri, storage.content_identity(uri) if _exists(fs, path) else "", str(fps), max_frames, max_side)
    hit = _PROBES.get(key)
    if hit is None:
        hit = _probe_file(uri, fps, max_frames, max_side)
        _PROBES.put(key, hit)
    return hit


def _exists(fs, path: str) -> bool:
    try:
        return bool(fs.exists(path))
    except Exception:  # noqa: BLE001 - the probe then names the problem
        return False


def iter_frames(uri: str, indices: Sequence[int], chunk: int = DECODE_CHUNK, info: VideoInfo | None = None):
    """Yield ``(indices_chunk, frames_chunk)`` of grid frames, decoding at most ``chunk`` at a time (memory
    O(chunk)). ``info``: the input's :func:`probe_video` (its grid decides which stored frame each index shows)."""
    uri = str(uri)
    idx = [int(i) for i in indices]
    if not idx:
        return
    fs, path = storage.open_fs(uri)
    info = info or probe_video(uri)
    decoder = FrameDecoder(local_video(uri), info.media, label=uri) if info.kind != "folder" else None
    for s in range(0, len(idx), chunk):
        part = idx[s:s + chunk]
        bad = [i for i in part if not 0 <= i < info.frames]
        if bad:
            raise InputError(uri, f"frame index {bad[0]} out of range (0..{info.frames - 1})")
        if info.kind == "folder":
            yield part, np.stack([_load_image(fs, info.frame_files[i], uri) for i in part])
            continue
        stored = info.timeline.stored_indices(part)
        frames = decoder.read(stored)
        yield part, np.stack([frames[j] for j in stored])


def read_frames(uri: str, indices: Sequence[int], chunk: int = DECODE_CHUNK,
                info: VideoInfo | None = None) -> np.ndarray:
    """Decode the given frame indices of a video or frames folder: ``(N, H, W, 3) uint8`` RGB."""
    parts = [arr for _, arr in iter_frames(uri, indices, chunk=chunk, info=info)]
    if not parts:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def read_fitted_frames(uri: str, indices: Sequence[int], size=(512, 512), mode: str = DEFAULT_FIT_MODE,
                       info: VideoInfo | None = None, chunk: int = FIT_CHUNK) -> np.ndarray:
    """``fit_frames(read_frames(uri, indices), size, mode)`` without ever holding more than ``chunk`` decoded
    full-resolution frames: ``(N, H, W, 3) uint8`` at the fitted ``size``. Peak memory is the fitted output plus
    ``chunk`` source frames, whatever the input resolution (a 24-frame 720p window decoded whole costs ~130 MB of
    transient copies)."""
    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    idx = [int(i) for i in indices]
    out = np.zeros((len(idx), th, tw, 3), np.uint8)
    k = 0
    for _, arr in iter_frames(uri, idx, chunk=max(1, int(chunk)), info=info):
        for f in arr:
            out[k] = f if f.shape[:2] == (th, tw) else fit_frame(f, (th, tw), mode)
            k += 1
        del arr
    return out


_LIBC = None


def release_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Each window allocates and frees ~150 MB of frames, probabilities and renders while MediaPipe's and the decoder's
    threads keep their own malloc arenas; without trimming, the freed pages stay in the process's RSS (measured:
    ~200 MB per worker between windows)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)
