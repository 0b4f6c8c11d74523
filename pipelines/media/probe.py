"""What a video file is, read by the decoder's own library (PyAV's FFmpeg) so the probe, the limits and the decoder
describe the same stream: container, the chosen video stream, its stored and display geometry, pixel format,
transfer (HDR), every presentation timestamp, the constant-rate grid it is edited on, audio.

- Only the containers we mean to accept are opened: MP4/MOV, Matroska/WebM, AVI, and animated GIF, APNG and WebP.
  FFmpeg itself is held to them (``format_whitelist``) and to plain files (``protocol_whitelist=file``), so a
  playlist (HLS), a concat script or a file naming other files or URLs is refused before anything follows it. The
  path is handed over as ``file:<absolute path>``: it can never be read as an option or a protocol.
- The stream is chosen explicitly: the video stream marked default, else the first one; cover art (attached
  pictures), subtitles, data and any other video stream are ignored.
- The frame count is what the stream holds: its packets are counted (demuxed, not decoded), never a header's
  claim; the count is bounded (``max_frames``) while it is read.
- Timestamps are read in presentation order (B-frames reorder decode order) and placed on a constant-rate grid by
  :mod:`pipelines.media.timeline`: variable-rate video (phones) is resampled, never refused.
- The first frame is decoded: the display matrix (rotation, flips), the pixel format and the transfer come from it.
- Bounded before it is read: at most :data:`MAX_STREAMS` streams are created (a file with more is refused: each
  costs a decoder while FFmpeg probes it), FFmpeg's decoders refuse pictures over ``max_side``² pixels (default
  :data:`MAX_SIDE`) even while it probes the stream, the stored size is checked against ``max_side`` before our
  first frame is decoded, packets are counted up to ``max_frames``; a video under :data:`MIN_SIDE` px or narrower than
  :data:`MAX_ASPECT`:1 is refused.
- Animated WebP, which FFmpeg does not decode, is read with Pillow (libwebp), with the same facts.
"""
from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

from pipelines.media.errors import InputError
from pipelines.media.timeline import RateError, Timeline, nominal_rate, timeline_from_timestamps, to_fraction

log = logging.getLogger(__name__)

FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,gif,apng,webp_pipe"
ACCEPTED = "MP4/MOV, Matroska/WebM, AVI, animated GIF/PNG/WebP"
MAX_STORED_FRAMES = 500_000  # packets counted at most (about 4.6 h at 30 fps) unless a caller bounds it lower
MAX_STREAMS = 32  # streams a demuxer may create (FFmpeg's max_streams): each costs a decoder while it is probed
MAX_SIDE = 8192  # px: no picture is decoded larger than this squared, unless a caller bounds it lower
MIN_SIDE = 16  # px: the shorter display side of a usable video
MAX_ASPECT = 16  # the longer display side over the shorter one
TRC_PQ, TRC_HLG = 16, 18  # AVColorTransferCharacteristic: SMPTE ST 2084, ARIB STD-B67


@dataclass(frozen=True)
class Orientation:
    """The display matrix as a player applies it: clockwise rotation (0/90/180/270), then mirror flags."""

    rotation: int = 0
    hflip: bool = False
    vflip: bool = False

    @property
    def swaps(self) -> bool:
        return self.rotation in (90, 270)


@dataclass(frozen=True)
class MediaInfo:
    """One video stream of one file, as the pipeline will see it (display geometry, constant-rate grid)."""

    format_name: str
    codec: str
    stream_index: int
    stored_width: int
    stored_height: int
    width: int  # display: upright, square pixels
    height: int
    sar: Fraction
    orientation: Orientation
    pix_fmt: str
    bit_depth: int
    transfer: Optional[str]  # "pq" | "hlg" | None (SDR)
    time_base: Fraction
    times: tuple[int, ...]  # presentation timestamps of the stored frames, sorted, in time_base ticks
    last_duration: int  # the last frame's own duration in ticks (0: unknown)
    origin: Fraction  # the file's start time in seconds (timestamps in the timeline are measured from it)
    timeline: Timeline  # at the stream's nominal rate
    has_audio: bool
    keyframes: tuple[int, ...] = ()  # stored indices of the keyframes (where a seek can land)
    interlaced: bool = False
    reader: str = "ffmpeg"  # "ffmpeg" (PyAV) | "pillow" (animated WebP)

    @property
    def frames(self) -> int:
        return self.timeline.frames

    @property
    def stored_frames(self) -> int:
        return len(self.times)

    @property
    def fps(self) -> float:
        return float(self.timeline.rate)

    @property
    def duration(self) -> float:
        return self.timeline.duration

    @property
    def variable_fps(self) -> bool:
        return self.timeline.resampled

    @property
    def rescaled(self) -> bool:
        return self.sar != 1

    def on_grid(self, rate=None, max_frames: int | None = None) -> Timeline:
        """The stored frames on a grid at ``rate`` (default: the nominal rate)."""
        if rate is None or to_fraction(rate) == self.timeline.rate:
            return self.timeline
        return timeline_from_timestamps(self.times, self.time_base, to_fraction(rate), self.last_duration,
                                        max_frames, self.origin)


def display_size(width: int, height: int, sar: Fraction, orientation: Orientation) -> tuple[int, int]:
    """(width, height) shown by a player: the sample aspect ratio widens (or narrows) the stored width, to an even
    number of pixels when it changes anything; a quarter turn swaps the two."""
    w = width if sar == 1 else max(2, 2 * round(width * sar / 2))
    return (height, w) if orientation.swaps else (w, height)


def orientation_of(matrix: Optional[bytes]) -> Orientation:
    """A 3×3 display matrix (9 native int32, 16.16 fixed point) as a player applies it (ffmpeg's autorotate)."""
    import math
    import struct

    if not matrix or len(matrix) < 36:
        return Orientation()
    m = struct.unpack("=9i", matrix[:36])
    s0, s1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if s0 == 0 or s1 == 0:
        return Orientation()
    theta = round(math.degrees(math.atan2(m[1] / s1, m[0] / s0)))  # the player's clockwise rotation
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:  # a transpose when mirrored
        return Orientation(90, hflip=m[3] > 0)
    if abs(theta - 180) < 1:
        return Orientation(0, hflip=m[0] < 0, vflip=m[4] < 0) if (m[0] < 0) != (m[4] < 0) else Orientation(180)
    if abs(theta - 270) < 1:
        return Orientation(270, hflip=m[3] < 0)
    if abs(theta) < 1:
        return Orientation(0, vflip=m[4] < 0)
    log.warning("display rotation of %d degrees is not a quarter turn: frames are used as stored", theta)
    return Orientation()


@functools.cache
def _quiet_ffmpeg() -> None:
    """Once per process: FFmpeg's last error reaches our exceptions (its ERROR level is on), and a crafted file's
    flood of errors does not reach the log (the ``libav`` logger) unless someone configured that logger."""
    import av.logging

    av.logging.set_level(av.logging.ERROR)
    if logging.getLogger("libav").level in (logging.NOTSET, logging.WARNING):  # PyAV sets WARNING itself
        logging.getLogger("libav").setLevel(logging.CRITICAL)


def open_container(path: str, max_side: int | None = None):
    """A PyAV container on the local file ``path``, held to the accepted containers, plain files, at most
    :data:`MAX_STREAMS` streams and pictures of at most ``max_side``² pixels; :class:`InputError` otherwise."""
    import av
    import av.logging

    _quiet_ffmpeg()
    target = "file:" + os.path.abspath(path)
    options = {"format_whitelist": FORMAT_WHITELIST, "protocol_whitelist": "file", "max_streams": str(MAX_STREAMS),
               "max_pixels": str((max_side or MAX_SIDE) ** 2)}  # the decoder refuses larger pictures while probing
    try:
        container = av.open(target, options=options)
    except av.error.FFmpegError as exc:
        refused = re.search(r"\[([\w,]+)\] Format not on whitelist", str(exc))
        if refused:
            raise InputError(path, f"container {refused.group(1)!r} is not accepted ({ACCEPTED})") from None
        raise InputError(path, "not a readable video (unknown format, corrupt or truncated)") from None
    if len(container.streams) >= MAX_STREAMS:
        container.close()
        raise InputError(path, f"holds {MAX_STREAMS} or more streams (at most {MAX_STREAMS - 1} are read)")
    return container


def _choose_stream(container, path: str):
    videos = [s for s in container.streams.video if not (s.disposition & _attached_pic())]
    if not videos:
        raise InputError(path, "no video stream in the file (audio-only or not a video)")
    default = [s for s in videos if s.disposition & _default_disposition()]
    return (default or videos)[0]


def _attached_pic() -> int:
    import av

    return int(av.stream.Disposition.attached_pic)


def _default_disposition() -> int:
    import av

    return int(av.stream.Disposition.default)


def _timestamps(container, stream, path: str, max_frames: int) -> tuple[list[int], int, tuple[int, ...]]:
    """Presentation timestamps of the stream's frames (sorted), the last one's duration and which frames (stored
    indices) are keyframes, by demuxing."""
    times: list[tuple[int, int, bool]] = []
    stored = 0
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        stored += 1
        if packet.is_discard:
            continue
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None:
            continue
        times.append((int(ts), int(packet.duration or 0), bool(packet.is_keyframe)))
        if len(times) > max_frames:
            raise InputError(path, f"holds more than {max_frames} frames")
    if stream.frames and stored < stream.frames:  # the index promises samples the file does not hold
        raise InputError(path, f"truncated: its index lists {stream.frames} frames, the file holds {stored}")
    times.sort()
    keyframes = tuple(i for i, (_, _, key) in enumerate(times) if key)
    return [t for t, _, _ in times], (times[-1][1] if times else 0), keyframes


def _first_frame(path: str, index: int):
    """The stream's first decoded frame (a second opening: the first one has demuxed to the end)."""
    import av

    with open_container(path) as container:
        try:
            for frame in container.decode(container.streams[index]):
                return frame
        except av.error.FFmpegError as exc:
            raise InputError(path, f"cannot decode the video: {str(exc)[:200]}") from None
    raise InputError(path, "video has no decodable frames")


def _frame_facts(frame) -> tuple[Orientation, str, int, Optional[str], bool]:
    import av

    matrix = None
    for sd in frame.side_data:
        if sd.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            matrix = bytes(sd)
    fmt = frame.format
    depth = max((c.bits for c in fmt.components), default=8)
    trc = {TRC_PQ: "pq", TRC_HLG: "hlg"}.get(int(frame.color_trc or 0))
    return orientation_of(matrix), fmt.name, int(depth), trc, bool(frame.interlaced_frame)


def _check_shape(path: str, w: int, h: int) -> None:
    if min(w, h) < MIN_SIDE:
        raise InputError(path, f"{w}x{h} is too small (the shorter side must be at least {MIN_SIDE} px)")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise InputError(path, f"{w}x{h} is too narrow (at most {MAX_ASPECT}:1)")


def probe_media(path: str, max_frames: int | None = None, max_side: int | None = None) -> MediaInfo:
    """:class:`MediaInfo` of a local video file; :class:`InputError` for anything we do not accept (see the module
    docstring). ``max_frames`` bounds the frames counted (and the grid), ``max_side`` the stored width and height
    (checked before a frame is decoded); remote URIs are fetched first by :func:`pipelines.media.video.local_video`."""
    import av

    bound = int(max_frames) if max_frames else MAX_STORED_FRAMES
    with open_container(path, max_side) as container:
        fmt = container.format.name
        if fmt == "webp_pipe":
            return _probe_webp(path, bound)
        stream = _choose_stream(container, path)
        sw, sh = stream.codec_context.width, stream.codec_context.height
        if max(sw, sh) > (max_side or MAX_SIDE):
            raise InputError(path, f"{sw}x{sh} exceeds the {max_side or MAX_SIDE} px limit")
        try:
            times, last, keyframes = _timestamps(container, stream, path, bound)
            if len(times) < 1:
                raise InputError(path, "video has no frames")
            orientation, pix_fmt, depth, transfer, interlaced = _frame_facts(_first_frame(path, stream.index))
        except av.error.FFmpegError as exc:
            raise InputError(path, f"not a readable video (corrupt or truncated): {str(exc)[:200]}") from None
        sar = Fraction(stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio or 1)
        sar = sar if sar > 0 else Fraction(1)
        tb = Fraction(stream.time_base or Fraction(1, 90000))
        origin = Fraction(container.start_time or 0, av.time_base)
        declared = Fraction(stream.average_rate) if stream.average_rate else None
        rate = nominal_rate(times, tb, declared)
        try:
            timeline = timeline_from_timestamps(times, tb, rate, last, bound, origin)
        except RateError as exc:
            raise InputError(path, str(exc)) from None
        w, h = display_size(stream.codec_context.width, stream.codec_context.height, sar, orientation)
        _check_shape(path, w, h)
        return MediaInfo(
            format_name=fmt, codec=stream.codec_context.codec.canonical_name, stream_index=stream.index,
            stored_width=stream.codec_context.width, stored_height=stream.codec_context.height, width=w, height=h,
            sar=sar, orientation=orientation, pix_fmt=pix_fmt, bit_depth=depth, transfer=transfer, time_base=tb,
            times=tuple(times), last_duration=last, origin=origin, timeline=timeline,
            has_audio=any(True for _ in container.streams.audio), keyframes=keyframes, interlaced=interlaced)


def _probe_webp(path: str, bound: int) -> MediaInfo:
    from pipelines.media.webp import MS, webp_facts

    times, last, (w, h) = webp_facts(path, bound)
    timeline = timeline_from_timestamps(times, MS, nominal_rate(times, MS), last, bound)
    return MediaInfo(format_name="webp", codec="webp", stream_index=0, stored_width=w, stored_height=h, width=w,
                     height=h, sar=Fraction(1), orientation=Orientation(), pix_fmt="rgb24", bit_depth=8,
                     transfer=None, time_base=MS, times=tuple(sorted(times)), last_duration=last, origin=Fraction(0),
                     timeline=timeline, has_audio=False, reader="pillow")
