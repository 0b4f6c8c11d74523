"""Stored frames decoded into what poses and the model see: upright, square-pixel, 8-bit RGB at the display size.

One decoder for every input (PyAV: FFmpeg's own libraries, the same ones :mod:`pipelines.media.probe` reads the
stream with), measured faster than decord on one core at 512² and 1080p (``benchmarks/media_decode.py``). Per frame:

- any bit depth and chroma layout → RGB24 through swscale with the frame's own matrix and range (full-range
  ``yuvj`` stays full range); PQ/HLG (HDR) frames are tone-mapped to SDR BT.709 (:mod:`pipelines.media.tonemap`);
- the display matrix (quarter turns, mirrors) as a player applies it;
- the sample aspect ratio applied by resizing to the display size (also where the stored size changes mid-stream).

Frames are addressed by their index in presentation order (what the timeline maps grid slots to). A run of wanted
frames costs one seek to the keyframe before it and a forward decode (a demuxer that cannot seek there is read from
the start instead) — unless the process's open cursor on that file already stands before it with no keyframe in
between: windows read in order then decode each frame once.
"""
from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np

from pipelines.media.errors import InputError
from pipelines.media.probe import MediaInfo, Orientation, open_container

log = logging.getLogger(__name__)

SEEK_GAP = 64  # wanted frames closer than this are reached by decoding forward, not by another seek
OPEN_CURSORS = 4  # open streams kept per process (windows of one input read in order continue decoding)


def upright(rgb: np.ndarray, orientation: Orientation, display_hw: tuple[int, int]) -> np.ndarray:
    """A stored frame (H, W, 3) as displayed: rotated clockwise, mirrored, then resized to ``display_hw``."""
    if orientation.rotation:
        rgb = np.rot90(rgb, -orientation.rotation // 90)
    if orientation.hflip:
        rgb = rgb[:, ::-1]
    if orientation.vflip:
        rgb = rgb[::-1]
    if rgb.shape[:2] != tuple(display_hw):
        import cv2

        h, w = display_hw
        area = h * w < rgb.shape[0] * rgb.shape[1]
        rgb = cv2.resize(np.ascontiguousarray(rgb), (w, h), interpolation=cv2.INTER_AREA if area else cv2.INTER_CUBIC)
    return np.ascontiguousarray(rgb)


def to_rgb(frame, info: MediaInfo) -> np.ndarray:
    """A decoded PyAV frame → (H, W, 3) uint8 RGB in display geometry."""
    if info.transfer is not None:
        from pipelines.media.tonemap import hdr_to_sdr

        rgb = hdr_to_sdr(frame.to_ndarray(format="rgb48le", src_color_range=frame.color_range, threads=1),
                         info.transfer)
    else:
        rgb = frame.to_ndarray(format="rgb24", src_color_range=frame.color_range, threads=1)
    return upright(rgb, info.orientation, (info.height, info.width))


class _Cursor:
    """An open stream and where its decoder stands: windows read in order continue where the last one stopped
    instead of seeking back to a keyframe (each seek decodes up to a GOP again)."""

    def __init__(self, path: str, info: MediaInfo) -> None:
        self.info = info
        self.container = open_container(path)
        self.stream = self.container.streams[info.stream_index]
        self.stream.codec_context.thread_count = 1
        self.frames: Iterator[tuple[int, object]] | None = None
        self.position = -1  # the stored index of the last frame the decoder gave

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()

    def reaches(self, first: int) -> bool:
        """Whether decoding on reaches stored frame ``first`` without passing a keyframe (where a seek lands)."""
        if self.frames is None or first <= self.position:
            return False
        k = bisect.bisect_right(self.info.keyframes, first) - 1
        return k < 0 or self.info.keyframes[k] <= self.position

    def frames_from(self, first: int) -> Iterator[tuple[int, object]]:
        if not self.reaches(first):
            self.frames = self._decode(first)
        for index, frame in self.frames:
            self.position = index
            yield index, frame

    def _decode(self, first: int) -> Iterator[tuple[int, object]]:
        """(stored index, frame) from at or before stored frame ``first`` on, by presentation time."""
        times = self.info.times
        if first > 0 or self.frames is not None:  # a used cursor always seeks (its decoder may have drained)
            try:
                self.container.seek(times[first], stream=self.stream, backward=True, any_frame=False)
            except Exception:  # noqa: BLE001 - a demuxer that cannot seek is read from the start
                self.container.seek(0)
        started = False
        for frame in self.container.decode(self.stream):
            ts = frame.pts if frame.pts is not None else frame.dts
            index = _nearest(times, ts) if ts is not None else 0
            if not started and index > first > 0:  # the seek went past the frame: read from the start
                self.container.seek(0)
                yield from self._decode(0)
                return
            started = True
            yield index, frame


class _Cursors:
    """Open cursors of this process, newest last; one user at a time takes one out and puts it back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: OrderedDict[tuple, _Cursor] = OrderedDict()

    @staticmethod
    def _key(path: str, info: MediaInfo) -> tuple:
        return path, info.stream_index, info.times[:1], len(info.times)

    def take(self, path: str, info: MediaInfo) -> _Cursor:
        with self.lock:
            cursor = self.items.pop(self._key(path, info), None)
        return cursor or _Cursor(path, info)

    def give(self, path: str, cursor: _Cursor) -> None:
        key = self._key(path, cursor.info)
        with self.lock:
            old = self.items.pop(key, None)
            self.items[key] = cursor
            while len(self.items) > OPEN_CURSORS:
                self.items.popitem(last=False)[1].close()
        if old is not None and old is not cursor:
            old.close()


_CURSORS = _Cursors()


class FrameDecoder:
    """Decode stored frames of one probed file (``info`` from :func:`~pipelines.media.probe.probe_media`)."""

    def __init__(self, path: str, info: MediaInfo, label: str | None = None) -> None:
        self.path, self.info, self.label = path, info, label or path

    def read(self, stored: Sequence[int]) -> dict[int, np.ndarray]:
        """``{stored index: frame}`` for each wanted stored frame (presentation order)."""
        wanted = sorted({int(i) for i in stored})
        bad = [i for i in wanted if not 0 <= i < self.info.stored_frames]
        if bad:
            raise InputError(self.label, f"frame {bad[0]} out of range (0..{self.info.stored_frames - 1})")
        if self.info.reader == "pillow":
            from pipelines.media.webp import read_webp

            return read_webp(self.path, wanted)
        out: dict[int, np.ndarray] = {}
        for run in _runs(wanted):
            out.update(self._read_run(run))
        return out

    def _read_run(self, run: list[int]) -> dict[int, np.ndarray]:
        import av

        need, out = set(run), {}
        try:
            cursor = _CURSORS.take(self.path, self.info)
        except InputError as exc:
            raise InputError(self.label, exc.reason) from None
        try:
            for index, frame in cursor.frames_from(run[0]):
                if index in need:
                    out[index] = to_rgb(frame, self.info)
                if index >= run[-1]:
                    break
            _CURSORS.give(self.path, cursor)
        except av.error.FFmpegError as exc:
            cursor.close()
            near = max(out) + 1 if out else run[0]
            raise InputError(self.label, f"decoding failed near frame {near} (truncated or corrupt file?): "
                                         f"{str(exc)[:160]}") from None
        except BaseException:
            cursor.close()
            raise
        return self._fill(run, out)

    def _fill(self, run: list[int], out: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Frames the decoder did not produce (dropped as corrupt) repeat the nearest earlier one."""
        if not out:
            raise InputError(self.label, f"decoding failed near frame {run[0]}: no frame was produced")
        prev = out[min(out)]
        for i in run:
            if i in out:
                prev = out[i]
            else:
                out[i] = prev
        return out


def _runs(wanted: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in wanted:
        if runs and i - runs[-1][-1] < SEEK_GAP:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _nearest(times: Sequence[int], ts: int) -> int:
    j = bisect.bisect_left(times, ts)
    if j >= len(times):
        return len(times) - 1
    if j > 0 and ts - times[j - 1] < times[j] - ts:
        return j - 1
    return j
