"""A corpus of small videos of the forms phones, cameras, browsers and editors write, generated at test time.

Nothing binary lives in the repository: :func:`build` writes one case's file with the system ``ffmpeg`` (5.1 here)
into a directory the caller gives, and reuses it when it is already there (files are written under a temporary name
and renamed, so a half-written file is never reused). :func:`build_all` builds many at once. Every file is tiny
(64x48 .. 160x120, a few frames to ~2 s; ``cfr_then_vfr_mp4`` is 9.6 s of 64x48) so the whole corpus takes a few
seconds. ``python -m tests.media_corpus DIR`` builds every case, checks with ffprobe, ffmpeg and PyAV that each file
is what its case says, prints one line per case and exits non-zero when a check fails.

Content (every case that holds video):

- The frame is flat grey except two marker blocks of a quarter of the width and height: a white block (RGB 255)
  at the top-left corner and a black block (RGB 0) at the top-right corner **of the display frame**, i.e. of the
  upright picture a player shows. The stored frame is generated as the inverse of the case's display transform, so
  after a correct normalisation (rotation, flip, SAR applied) *every* case shows white top-left, black top-right
  (``Case.marker == "top-left"``); :func:`markers` reads the two corners back. White/black in two different
  corners tell all eight rotations and flips apart (a transpose keeps white top-left but moves black bottom-left).
- Stored frame ``k`` (0-based, in presentation order) has grey level ``40 + 6 * (k % 30)`` (RGB, 40..214) in the
  background; :func:`frame_code` reads ``k % 30`` back from the centre of a decoded RGB frame (tolerant to an error
  of +-3 levels: a limited-range round trip through swscale alone costs up to 2). In full-range files (MJPEG,
  yuvj420p) the stored luma is that grey level, in limited-range files it is ``16 + 219 * grey / 255``; a correct
  RGB conversion gives the same grey either way.
- Encodes are lossless or near lossless: x264 ``-qp 1`` (High profile; ``-qp 0`` in :func:`marker_video`), x265
  ``qp=2``, VP9/WebP/PNG/GIF lossless, ProRes HQ, MJPEG ``-q:v 1``, SVT-AV1 ``-crf 10``.

Expected values (:class:`Case`): ``frames`` is the frame count after resampling to the constant output rate ``fps``
(the stream's nominal rate). The oracle is ffmpeg's own fps filter, see :func:`oracle_codes`:
``ffmpeg -reinit_filter 0 -i FILE -map 0:v:0 -vf scale=32:32,fps=FPS -fps_mode passthrough -f rawvideo -`` (ffmpeg
5.1 here, autorotate on); the counts below were computed with it and ``python -m tests.media_corpus`` re-checks every
count, and the frame codes it shows, against it. For constant-rate cases it is the stored frame count. The
pipeline's grid ends where the last stored frame ends (its own duration, else the typical interval); for the two
variable-rate MP4s ffmpeg 5.1 demuxes no packet durations and ends the stream at the last frame's timestamp, so the
oracle is one less (android 60 vs 59, cfr_then_vfr 240 vs 239); for the iPhone MOV it counts the last frame's
1/30 s too (68). Each case's ``note`` says so.

The display size is upright (90/270 swap width and height) and square-pixel: ``width = stored_width * sar`` rounded
to the nearest even number when ``sar != 1`` (the one anamorphic case is exact: 108 * 32/27 = 128). ``vfr`` says the
stored presentation timestamps are not evenly spaced. Files with AAC or Opus audio in Matroska/WebM start their video
a few ms late (the muxer shifts everything by the audio's priming): ``vp9_webm`` 0.007 s, ``mkv_two_audio_subs``
0.021 s.

How the harder forms are made with ffmpeg 5.1:

- Rotation and mirror: ffmpeg 5.1 has no ``-display_rotation``, and ``-metadata:s:v rotate=N`` works only with
  stream copy and gives a *counter-clockwise* matrix (rotate=90 is shown turned 90 degrees anticlockwise). So the
  ``tkhd`` matrix of the video track is written directly (ISO/IEC 14496-12 8.3.2, ``x' = a*x + c*y + tx``,
  ``y' = b*x + d*y + ty``, y downwards), as an iPhone writes it: a clockwise display rotation of 90 is
  ``a=0 b=1 c=-1 d=0 tx=stored_height``, for which ffprobe reports ``rotation=-90`` (ffprobe's value is
  counter-clockwise). The mirror is ``a=-1 d=1 tx=stored_width``; ffprobe 5.1 reports it as ``rotation=-180``
  (it reads only the rotation part), while ffmpeg 5.1's autorotate and PyAV see the mirror.
- Variable rate: ``select`` on a 60 fps source (keeping its timestamps) or ``setpts`` with an expression of the
  frame number on a 1/90000 time base, both with ``-fps_mode passthrough -enc_time_base ...`` so the encoder keeps
  the timestamps exactly.
- Animated WebP: ffmpeg 5.1 encodes it (``libwebp_anim``) but cannot decode it; it is read back with Pillow.
  Nothing in the list needed PyAV to write it.

Refused cases carry ``refused``: a lower-case substring the error message must contain, and ``frames=None``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
CODE_BASE, CODE_STEP, CODE_PERIOD = 40, 6, 30  # grey level of stored frame k: CODE_BASE + CODE_STEP * (k % PERIOD)
WHITE, BLACK = 255, 0
SIZE = (96, 72)  # the default display size
MARKER = "top-left"  # where the white block is in every correctly normalised display frame (black: top-right)

_LEVEL = f"{CODE_BASE}+{CODE_STEP}*mod(N,{CODE_PERIOD})"
_PIXEL = f"if(lt(Y,H/4),if(lt(X,W/4),{WHITE},if(gte(X,W*3/4),{BLACK},{_LEVEL})),{_LEVEL})"
H264 = ("-c:v", "libx264", "-preset", "veryfast", "-qp", "1", "-pix_fmt", "yuv420p")
AAC = ("-c:a", "aac", "-b:a", "64k")
# the stored frame is the inverse of the display transform applied to the upright picture
_STORED_FILTER = {(0, False): "", (90, False): "transpose=cclock", (180, False): "hflip,vflip",
                  (270, False): "transpose=clock", (0, True): "hflip"}


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    # what a correct normaliser must produce (None where the case must be refused):
    frames: int | None  # frame count after resampling to the constant output rate `fps`
    width: int  # display width: upright (rotation applied) and square pixels (SAR applied)
    height: int
    fps: Fraction  # the constant output rate (the stream's nominal rate)
    duration: float  # seconds = frames / fps
    refused: str | None = None  # a lower-case substring the error message must contain, for refused cases
    vfr: bool = False  # the stored timestamps are variable-rate (must be resampled)
    rotation: int = 0  # display rotation in degrees clockwise applied by a player (0/90/180/270)
    hflip: bool = False
    sar: Fraction = Fraction(1)
    has_audio: bool = False
    note: str = ""
    # extras
    marker: str = MARKER  # where the white block must be after normalisation ("" where there is no picture)
    stored_frames: int | None = None  # frames (packets) the stream stores, where that differs from `frames`


Maker = Callable[[Path, Path], None]  # (output path, scratch folder) -> None


@dataclass(frozen=True)
class _Entry:
    ext: str
    make: Maker
    expect: dict[str, Any]  # Case fields
    facts: dict[str, Any] = field(default_factory=dict)  # what ffprobe/PyAV must see (checked by `verify`)


_ENTRIES: dict[str, _Entry] = {}


def _case(name: str, ext: str, facts: dict[str, Any] | None = None, **expect: Any) -> Callable[[Maker], Maker]:
    def register(make: Maker) -> Maker:
        _ENTRIES[name] = _Entry(ext, make, expect, facts or {})
        return make
    return register


# ---------------------------------------------------------------------------------------------------- running tools

def _run(cmd: Sequence[str]) -> bytes:
    proc = subprocess.run(list(cmd), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-800:]}")
    return proc.stdout


def ffmpeg(*args: str | Path) -> bytes:
    return _run([FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)])


def ffprobe(path: Path, *args: str) -> dict[str, Any]:
    out = _run([FFPROBE, "-v", "error", "-of", "json", *args, str(path)])
    return json.loads(out)


# ---------------------------------------------------------------------------------------------------- frame content

def _graph(size: tuple[int, int], rate: Fraction | int | str, frames: int, *, select: str = "", transform: str = "",
           post: str = "") -> str:
    """lavfi graph of ``frames`` frames of the marker picture at ``size`` (display size unless ``transform`` is
    empty), frame number N counted after ``select``; ``transform`` turns the upright picture into the stored one.
    The graph ends by itself (``trim``), so audio inputs are not cut short as ``-frames:v`` would cut them."""
    w, h = size
    chain = [f"color=c=black:s={w}x{h}:r={rate}"]
    if select:
        chain.append(f"select='{select}'")
    chain += ["format=gbrp", f"geq=r='{_PIXEL}':g='{_PIXEL}':b='{_PIXEL}'", f"trim=end_frame={frames}"]
    chain += [f for f in (transform, post) if f]
    return ",".join(chain)


def grey_level(k: int) -> int:
    """The RGB grey level of stored frame k's background."""
    return CODE_BASE + CODE_STEP * (k % CODE_PERIOD)


def frame_code(frame: np.ndarray) -> int:
    """``k % 30`` of the stored frame k a decoded frame (H, W, 3) RGB or (H, W) grey uint8 shows: the median of the
    flat centre (3/8..5/8 of both sides) rounded to the nearest grey level. Raises ValueError on a non-corpus frame."""
    a = np.asarray(frame, dtype=np.float64)
    h, w = a.shape[:2]
    centre = a[3 * h // 8: max(5 * h // 8, 3 * h // 8 + 1), 3 * w // 8: max(5 * w // 8, 3 * w // 8 + 1)]
    value = float(np.median(centre))
    code = round((value - CODE_BASE) / CODE_STEP)
    if not 0 <= code < CODE_PERIOD or abs(value - grey_level(code)) > CODE_STEP / 2:
        raise ValueError(f"no frame code in this frame (centre grey {value:.1f})")
    return int(code)


def markers(frame: np.ndarray) -> tuple[str, str]:
    """(corner of the white block, corner of the black block) of a decoded frame, e.g. ("top-left", "top-right")
    for a correctly oriented one; "?" where no corner is white (black)."""
    a = np.asarray(frame, dtype=np.float64)
    a = a.mean(axis=2) if a.ndim == 3 else a
    h, w = a.shape
    ys, xs = (h // 16, 3 * h // 16 + 1), (w // 16, 3 * w // 16 + 1)
    ye, xe = (h - ys[1], h - ys[0]), (w - xs[1], w - xs[0])
    corners = {"top-left": (ys, xs), "top-right": (ys, xe), "bottom-left": (ye, xs), "bottom-right": (ye, xe)}
    means = {k: float(a[y0:y1, x0:x1].mean()) for k, ((y0, y1), (x0, x1)) in corners.items()}
    white = [k for k, v in means.items() if v > 220]
    black = [k for k, v in means.items() if v < 20]
    return (white[0] if len(white) == 1 else "?", black[0] if len(black) == 1 else "?")


# ---------------------------------------------------------------------------------------------------- encoding

def _audio_input(seconds: float, freq: int = 440) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=48000:duration={seconds}"]


def _encode(out: Path, graph: str, codec: Sequence[str], *, audio: float | None = None,
            audio_codec: Sequence[str] = AAC, args: Sequence[str] = ()) -> None:
    """Encode the lavfi ``graph`` (plus a sine of ``audio`` seconds) into ``out``."""
    cmd: list[str] = ["-f", "lavfi", "-i", graph]
    if audio is not None:
        cmd += _audio_input(audio) + ["-map", "0:v", "-map", "1:a", *audio_codec]
    ffmpeg(*cmd, *codec, *args, out)


def _h264(out: Path, frames: int = 25, rate: int = 25, size: tuple[int, int] = SIZE, **kw: Any) -> None:
    transform = _STORED_FILTER[(kw.pop("rotation", 0), kw.pop("hflip", False))]
    graph = _graph(size, rate, frames, transform=transform, post=kw.pop("post", ""))
    _encode(out, graph, kw.pop("codec", H264), **kw)


def _x265(params: str = "", pix_fmt: str = "yuv420p") -> tuple[str, ...]:
    opts = ":".join(p for p in ("log-level=error", "qp=2", params) if p)
    return ("-c:v", "libx265", "-preset", "ultrafast", "-x265-params", opts, "-pix_fmt", pix_fmt, "-tag:v", "hvc1")


def _pts_expr(ticks: Sequence[int]) -> str:
    """setpts expression giving frame N the tick ticks[N] (a flat sum, so ffmpeg's parser does not nest)."""
    terms = [str(ticks[0])] + [f"{b - a}*gte(N,{i})" for i, (a, b) in enumerate(zip(ticks, ticks[1:]), 1)]
    return "+".join(terms)


VFR_TIMING = ("-fps_mode", "passthrough", "-enc_time_base", "1/90000", "-video_track_timescale", "90000")


# ---------------------------------------------------------------------------------------------------- mp4 tkhd

def _boxes(data: bytes | bytearray, start: int, end: int) -> Iterable[tuple[str, int, int]]:
    """(type, payload start, end) of the ISO BMFF boxes in data[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            size, head = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < head:
            return
        yield kind.decode("latin-1"), pos + head, pos + size
        pos += size


def _child(data: bytes | bytearray, start: int, end: int, kind: str) -> tuple[int, int] | None:
    return next(((b, e) for k, b, e in _boxes(data, start, end) if k == kind), None)


def _video_tkhd(data: bytes | bytearray) -> int:
    """Offset of the payload of the first video track's tkhd box."""
    moov = _child(data, 0, len(data), "moov")
    assert moov, "no moov box"
    for kind, b, e in _boxes(data, *moov):
        mdia = _child(data, b, e, "mdia") if kind == "trak" else None
        hdlr = _child(data, *mdia, "hdlr") if mdia else None
        if hdlr and data[hdlr[0] + 8: hdlr[0] + 12] == b"vide":
            tkhd = _child(data, b, e, "tkhd")
            assert tkhd, "trak without tkhd"
            return tkhd[0]
    raise AssertionError("no video track")


def display_matrix(rotation: int, hflip: bool, w: int, h: int) -> tuple[int, ...]:
    """The tkhd matrix (a, b, u, c, d, v, tx, ty, w) of a player's clockwise ``rotation`` (or a horizontal mirror) of
    a w x h stored frame: 16.16 fixed point, u/v/w 2.30."""
    one = 1 << 16
    a, b, c, d, tx, ty = {(0, False): (one, 0, 0, one, 0, 0), (90, False): (0, one, -one, 0, h, 0),
                          (180, False): (-one, 0, 0, -one, w, h), (270, False): (0, -one, one, 0, 0, w),
                          (0, True): (-one, 0, 0, one, w, 0)}[(rotation, hflip)]
    return a, b, 0, c, d, 0, tx * one, ty * one, 1 << 30


def set_display_matrix(path: Path, rotation: int, hflip: bool = False) -> None:
    """Write the display matrix into the video track's tkhd (ISO/IEC 14496-12 8.3.2: after version/flags,
    creation, modification, track_ID, reserved, duration (32 or 64 bit), reserved[2], layer, alternate_group,
    volume, reserved come matrix[9], width, height, the last two 16.16)."""
    data = bytearray(path.read_bytes())
    tkhd = _video_tkhd(data)
    offset = tkhd + 4 + (32 if data[tkhd] == 1 else 20) + 8 + 8
    w, h = (v >> 16 for v in struct.unpack_from(">2I", data, offset + 36))
    struct.pack_into(">9i", data, offset, *display_matrix(rotation, hflip, w, h))
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------- marker_video

def marker_video(path: Path | str, frames: int, fps: float | Fraction | int = 25, size: tuple[int, int] = (64, 48),
                 timestamps: Sequence[float] | None = None, audio_beeps: Sequence[float] | None = None,
                 beep: float = 0.05) -> Path:
    """Write a lossless H.264 MP4 (x264 ``-qp 0``, yuv420p) of ``frames`` corpus frames: frame k has grey level
    ``grey_level(k)`` (read back with :func:`frame_code` as ``k % 30``) and the white/black corner markers.

    ``timestamps``: per-frame presentation times in seconds (strictly increasing), stored exactly to the nearest
    1/90000 s (the track timescale); default ``k / fps``. The last frame lasts 1/fps. ``audio_beeps``: start times
    (s) of ``beep``-second 1 kHz beeps in an otherwise silent AAC track as long as the video."""
    path = Path(path)
    seconds = (timestamps[-1] if timestamps else (frames - 1) / fps) + 1 / fps
    if timestamps is not None:
        if len(timestamps) != frames or any(b <= a for a, b in zip(timestamps, timestamps[1:])) or timestamps[0] < 0:
            raise ValueError("timestamps must be `frames` increasing non-negative times")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "pts.txt")
        ticks = [round(t * 90000) for t in (timestamps or [k / fps for k in range(frames)])]
        script.write_text(f"settb=1/90000,setpts='{_pts_expr(ticks)}'")
        cmd = ["-f", "lavfi", "-i", _graph(size, Fraction(fps).limit_denominator(1001), frames)]
        if audio_beeps:
            gate = "+".join(f"between(t,{b},{b + beep})" for b in audio_beeps)
            cmd += ["-f", "lavfi", "-i", f"aevalsrc=exprs='0.5*sin(2*PI*1000*t)*({gate})':s=48000:d={seconds}",
                    "-map", "0:v", "-map", "1:a", *AAC]
        ffmpeg(*cmd, "-filter_script:v", script, "-c:v", "libx264", "-preset", "veryfast",
               "-qp", "0", "-pix_fmt", "yuv420p", *VFR_TIMING, path)
    return path


# ---------------------------------------------------------------------------------------------------- the cases

F = Fraction


@_case("cfr_h264_mp4", ".mp4", {"codec": "h264", "profile": "High", "pix_fmt": "yuv420p", "audio_streams": 1},
       frames=50, width=96, height=72, fps=F(25), has_audio=True, note="plain 25 fps H.264 + AAC, 2 s")
def _cfr_h264_mp4(out: Path, tmp: Path) -> None:
    _h264(out, 50, audio=2.0)


@_case("xvid_avi_bframes", ".avi", {"codec": "mpeg4", "tag": "XVID", "b_frames": True, "format": "avi"},
       frames=25, width=96, height=72, fps=F(25), note="MPEG-4 Part 2 (XVID tag), 2 B-frames, AVI")
def _xvid_avi(out: Path, tmp: Path) -> None:
    _h264(out, codec=("-c:v", "mpeg4", "-vtag", "XVID", "-bf", "2", "-q:v", "2"))


# 60 fps source frame n kept: 0-59 every 2nd (30 fps), 60-89 every 4th (15 fps), 90-104 all (60 fps burst),
# 105-134 every 2nd (30 fps): 30 + 8 + 15 + 15 = 68 stored frames over 2.25 s.
IPHONE_SELECT = "if(lt(n,60),not(mod(n,2)),if(lt(n,90),not(mod(n,4)),if(lt(n,105),1,not(mod(n,2)))))"


@_case("iphone_hevc_mov_vfr_rot90", ".mov",
       {"codec": "hevc", "tag": "hvc1", "stored": (96, 72), "audio_streams": 1, "format": "mov", "packets": 68,
        "rotation": -90, "steps_ms": {16.7, 33.3, 66.7}},
       # 68: what `ffmpeg -i FILE -vf fps=30` makes of the 68 stored frames (oracle_codes): last frame at 2.233 s,
       # ffmpeg 5.1 ends the stream at 2.267 s (the last frame's 1/30 s counted)
       frames=68, width=72, height=96, fps=F(30), vfr=True, rotation=90, has_audio=True, stored_frames=68,
       note="iPhone-like: HEVC hvc1 in MOV, timescale 600, portrait (stored 96x72 landscape, rotation 90 cw), "
            "30 fps with a 15 fps stretch (1.0-1.5 s) and a 60 fps burst (1.5-1.75 s), AAC")
def _iphone(out: Path, tmp: Path) -> None:
    graph = _graph((72, 96), 60, 68, select=IPHONE_SELECT, transform=_STORED_FILTER[(90, False)])
    _encode(out, graph, _x265(), audio=2.25,
            args=("-fps_mode", "passthrough", "-video_track_timescale", "600"))
    set_display_matrix(out, 90)


# intervals 30, 36, 34 ms repeating (30 fps on average), in ticks of 1/90000 s
ANDROID_PTS = "(100*floor(N/3)+30*gte(mod(N,3),1)+36*gte(mod(N,3),2))*90"


@_case("android_h264_mp4_vfr", ".mp4", {"codec": "h264", "profile": "High", "time_base": "1/90000",
                                       "steps_ms": {30.0, 34.0, 36.0}},
       # 60: the last frame counts for its typical interval (pipelines.media.timeline); the oracle (ffmpeg 5.1's
       # fps=30 filter, oracle_codes) gives 59: it ends the stream at the last frame's timestamp
       frames=60, width=96, height=72, fps=F(30), vfr=True, stored_frames=60,
       note="Android-like: H.264 High, timescale 90000, frame intervals 30/36/34 ms repeating (30 fps average); "
            "frames: 60 counting the last frame's 1/30 s (ffmpeg 5.1's fps filter: 59)")
def _android(out: Path, tmp: Path) -> None:
    _h264(out, 60, 30, post=f"settb=1/90000,setpts='{ANDROID_PTS}'", args=VFR_TIMING)


def _rotated(rotation: int) -> Maker:
    def make(out: Path, tmp: Path) -> None:
        _h264(out, rotation=rotation)
        set_display_matrix(out, rotation)
    return make


for _rot, _ffprobe_rotation in ((90, -90), (180, -180), (270, 90)):
    _swap = _rot in (90, 270)
    _case(f"rot{_rot}_mp4", ".mp4", {"codec": "h264", "stored": (72, 96) if _swap else (96, 72),
                                     "rotation": _ffprobe_rotation},
          frames=25, width=96, height=72, fps=F(25), rotation=_rot,
          note=f"tkhd matrix: rotate {_rot} degrees clockwise to display (ffprobe 5.1: rotation={_ffprobe_rotation})",
          )(_rotated(_rot))


@_case("hflip_mp4", ".mp4", {"codec": "h264", "rotation": -180},
       frames=25, width=96, height=72, fps=F(25), hflip=True,
       note="tkhd matrix a=-1 d=1 tx=width: horizontal mirror (ffprobe 5.1 misreports it as rotation=-180)")
def _hflip(out: Path, tmp: Path) -> None:
    _h264(out, hflip=True)
    set_display_matrix(out, 0, hflip=True)


@_case("anamorphic_sar", ".mp4", {"codec": "h264", "stored": (108, 72), "sar": "32:27"},
       frames=25, width=128, height=72, fps=F(25), sar=F(32, 27),
       note="stored 108x72 (3:2 like 720x480) with SAR 32:27: displays 128x72 (16:9), exact")
def _anamorphic(out: Path, tmp: Path) -> None:
    _h264(out, size=(108, 72), post="setsar=32/27")


@_case("av1_webm", ".webm", {"codec": "av1", "pix_fmt": "yuv420p", "format": "webm"},
       frames=25, width=96, height=72, fps=F(25), note="AV1 (SVT-AV1 preset 12, crf 10) in WebM, 8-bit")
def _av1(out: Path, tmp: Path) -> None:
    _h264(out, codec=("-c:v", "libsvtav1", "-preset", "12", "-crf", "10", "-pix_fmt", "yuv420p"))


@_case("vp9_webm", ".webm",
       {"codec": "vp9", "pix_fmt": "yuv420p", "audio_codec": "opus", "audio_streams": 1, "format": "webm"},
       frames=25, width=96, height=72, fps=F(25), has_audio=True, note="lossless VP9 + Opus in WebM")
def _vp9(out: Path, tmp: Path) -> None:
    vp9 = ("-c:v", "libvpx-vp9", "-lossless", "1", "-deadline", "realtime", "-cpu-used", "8", "-pix_fmt", "yuv420p")
    _h264(out, codec=vp9, audio=1.0, audio_codec=("-c:a", "libopus", "-b:a", "32k"))


@_case("animated_gif", ".gif", {"codec": "gif", "format": "gif"},
       frames=10, width=96, height=72, fps=F(10), note="10 frames, delays of 10 centiseconds, loops, grey palette")
def _gif(out: Path, tmp: Path) -> None:
    _h264(out, 10, 10, codec=("-pix_fmt", "gray", "-loop", "0"))


@_case("animated_webp", ".webp", {"reader": "pillow"},
       frames=10, width=96, height=72, fps=F(10),
       note="lossless animated WebP (libwebp_anim), 100 ms per frame; ffmpeg 5.1 cannot decode it (Pillow can)")
def _webp(out: Path, tmp: Path) -> None:
    _h264(out, 10, 10, codec=("-c:v", "libwebp_anim", "-lossless", "1", "-pix_fmt", "bgra", "-loop", "0"))


@_case("apng", ".png", {"codec": "apng", "format": "apng"},
       frames=10, width=96, height=72, fps=F(10), note="animated PNG named .png (-f apng -plays 0), 10 fps")
def _apng(out: Path, tmp: Path) -> None:
    _h264(out, 10, 10, codec=("-pix_fmt", "rgb24", "-f", "apng", "-plays", "0"))


_STILL = {"frames": None, "width": 96, "height": 72, "fps": F(0), "refused": "still image", "marker": ""}


@_case("still_png", ".png", {"codec": "png"}, **_STILL, note="a PNG image")
def _still_png(out: Path, tmp: Path) -> None:
    _h264(out, 1, codec=("-pix_fmt", "rgb24", "-update", "1"))


@_case("still_gif", ".gif", {"codec": "gif"}, **_STILL, note="a one-frame GIF")
def _still_gif(out: Path, tmp: Path) -> None:
    _h264(out, 1, codec=("-pix_fmt", "gray",))


@_case("still_webp", ".webp", {"reader": "pillow"}, **_STILL, note="a lossless still WebP (VP8L, no ANIM chunk)")
def _still_webp(out: Path, tmp: Path) -> None:
    _h264(out, 1, codec=("-c:v", "libwebp", "-lossless", "1", "-pix_fmt", "bgra"))


HDR10 = ("hdr10-opt=1:repeat-headers=1:master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)"
         "L(10000000,1):max-cll=1000,400")


@_case("hdr10_hevc", ".mp4", {"codec": "hevc", "pix_fmt": "yuv420p10le", "transfer": "smpte2084",
                              "primaries": "bt2020", "profile": "Main 10"},
       frames=25, width=96, height=72, fps=F(25),
       note="HDR10: 10-bit HEVC, BT.2020 primaries, PQ transfer, mastering metadata; decodes, a tone-map flag is "
            "expected (grey levels then change, frame_code is only valid without tone mapping)")
def _hdr10(out: Path, tmp: Path) -> None:
    _h264(out, codec=(*_x265(HDR10, "yuv420p10le"), "-color_primaries", "bt2020", "-color_trc", "smpte2084",
                      "-colorspace", "bt2020nc"))


@_case("h264_444", ".mp4", {"codec": "h264", "pix_fmt": "yuv444p", "profile": "High 4:4:4 Predictive"},
       frames=25, width=96, height=72, fps=F(25), note="H.264 High 4:4:4 Predictive, yuv444p")
def _h264_444(out: Path, tmp: Path) -> None:
    _h264(out, codec=("-c:v", "libx264", "-preset", "veryfast", "-qp", "1", "-pix_fmt", "yuv444p"))


@_case("prores_mov", ".mov", {"codec": "prores", "profile": "HQ", "pix_fmt": "yuv422p10le", "format": "mov"},
       frames=25, width=96, height=72, fps=F(25), note="ProRes 422 HQ (prores_ks profile 3), 10-bit 4:2:2, MOV")
def _prores(out: Path, tmp: Path) -> None:
    _h264(out, codec=("-c:v", "prores_ks", "-profile:v", "3", "-pix_fmt", "yuv422p10le"))


@_case("mjpeg_avi", ".avi", {"codec": "mjpeg", "pix_fmt": "yuvj420p", "format": "avi"},
       frames=25, width=96, height=72, fps=F(25), note="Motion JPEG, yuvj420p (full range), AVI")
def _mjpeg(out: Path, tmp: Path) -> None:
    _h264(out, codec=("-c:v", "mjpeg", "-pix_fmt", "yuvj420p", "-q:v", "1"))


@_case("yuvj_full_range_mp4", ".mp4", {"codec": "h264", "pix_fmt": "yuvj420p", "range": "pc"},
       frames=25, width=96, height=72, fps=F(25), note="H.264 yuvj420p, full range (color_range pc)")
def _yuvj(out: Path, tmp: Path) -> None:
    _h264(out, codec=("-c:v", "libx264", "-preset", "veryfast", "-qp", "1", "-pix_fmt", "yuvj420p"))


@_case("fps60_mp4", ".mp4", {"codec": "h264", "rate": "60/1"},
       frames=60, width=96, height=72, fps=F(60), note="60 fps, 1 s")
def _fps60(out: Path, tmp: Path) -> None:
    _h264(out, 60, 60)


SRT = "1\n00:00:00,000 --> 00:00:00,800\nsubtitle one\n\n2\n00:00:00,800 --> 00:00:01,000\nsubtitle two\n"


@_case("mkv_two_audio_subs", ".mkv", {"codec": "h264", "audio_streams": 2, "subtitle_streams": 1, "format": "matroska"},
       frames=25, width=96, height=72, fps=F(25), has_audio=True,
       note="MKV: H.264, AAC (eng) and Opus (fra) audio, an SRT subtitle track")
def _mkv_subs(out: Path, tmp: Path) -> None:
    srt = tmp / "subs.srt"
    srt.write_text(SRT)
    ffmpeg("-f", "lavfi", "-i", _graph(SIZE, 25, 25), *_audio_input(1.0), *_audio_input(1.0, 880), "-i", srt,
           "-map", "0:v", "-map", "1:a", "-map", "2:a", "-map", "3:s", *H264,
           "-c:a:0", "aac", "-c:a:1", "libopus", "-c:s", "srt", "-metadata:s:a:0", "language=eng",
           "-metadata:s:a:1", "language=fra", out)


@_case("two_video_streams_mkv", ".mkv", {"codec": "h264", "stored": (64, 48), "video_streams": 2},
       frames=8, width=64, height=48, fps=F(25),
       note="two video streams: the first (default disposition) 64x48 x 8 frames, the second 160x120 x 40 frames")
def _two_video(out: Path, tmp: Path) -> None:
    ffmpeg("-f", "lavfi", "-i", _graph((64, 48), 25, 8), "-f", "lavfi", "-i", _graph((160, 120), 25, 40),
           "-map", "0:v", "-map", "1:v", *H264,
           "-disposition:v:0", "default", "-disposition:v:1", "0", out)


@_case("mp4_with_cover_art", ".mp4", {"codec": "h264", "video_streams": 1, "attached_pics": 1},
       frames=25, width=96, height=72, fps=F(25),
       note="H.264 plus a 160x160 PNG cover (second video stream, disposition attached_pic)")
def _cover(out: Path, tmp: Path) -> None:
    cover = tmp / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "testsrc=s=160x160", "-frames:v", "1", "-update", "1", cover)
    ffmpeg("-f", "lavfi", "-i", _graph(SIZE, 25, 25), "-i", cover, "-map", "0:v", "-map", "1:v",
           "-c:v:0", "libx264", "-preset", "veryfast", "-qp", "1", "-pix_fmt:v:0", "yuv420p",
           "-c:v:1", "png", "-disposition:v:1", "attached_pic", out)


@_case("odd_size", ".mp4", {"codec": "h264", "pix_fmt": "yuv444p", "stored": (71, 53)},
       frames=25, width=71, height=53, fps=F(25), note="71x53 (odd both ways), H.264 4:4:4")
def _odd(out: Path, tmp: Path) -> None:
    _h264(out, size=(71, 53), codec=("-c:v", "libx264", "-preset", "veryfast", "-qp", "1", "-pix_fmt", "yuv444p"))


@_case("ts_offset_10s", ".mp4", {"codec": "h264", "start": 10.0},
       frames=25, width=96, height=72, fps=F(25), note="timestamps start at 10 s (-output_ts_offset 10)")
def _ts_offset(out: Path, tmp: Path) -> None:
    _h264(out, args=("-output_ts_offset", "10"))


@_case("hevc_bframes", ".mp4", {"codec": "hevc", "b_frames": True},
       frames=25, width=96, height=72, fps=F(25), note="HEVC with 4 B-frames (b-adapt 0)")
def _hevc_b(out: Path, tmp: Path) -> None:
    _h264(out, codec=_x265("bframes=4:b-adapt=0"))


@_case("edit_list_negative_start", ".mp4",
       {"codec": "h264", "packets": 50, "discarded": 10, "start": 0.0, "first_code": 10},
       frames=40, width=96, height=72, fps=F(25), stored_frames=50,
       note="`-ss 0.4 -c copy` of 50 frames (one keyframe, B-frames): 50 packets, the first 10 with negative "
            "timestamps and the discard flag (edit list media_time 0.4 s); start_time 0; 40 frames are presented")
def _edit_list(out: Path, tmp: Path) -> None:
    src = tmp / "src.mp4"
    _h264(src, 50, codec=(*H264, "-bf", "3", "-g", "50"))
    ffmpeg("-ss", "0.4", "-i", src, "-c", "copy", out)


@_case("interlaced_h264", ".mp4", {"codec": "h264", "field_order": "tt"},
       frames=25, width=96, height=72, fps=F(25), note="interlaced (MBAFF, top field first) H.264, 25 frames/s")
def _interlaced(out: Path, tmp: Path) -> None:
    _h264(out, post="setfield=tff", codec=(*H264, "-flags", "+ildct+ilme", "-x264-params", "interlaced=1:tff=1"))


@_case("one_frame_mp4", ".mp4", {"codec": "h264", "packets": 1},
       frames=None, width=96, height=72, fps=F(25), refused="single frame", marker="", note="one H.264 frame")
def _one_frame(out: Path, tmp: Path) -> None:
    _h264(out, 1)


@_case("two_frame_mp4", ".mp4", {"codec": "h264", "packets": 2},
       frames=2, width=96, height=72, fps=F(25), note="two H.264 frames")
def _two_frames(out: Path, tmp: Path) -> None:
    _h264(out, 2)


@_case("resolution_change_mkv", ".mkv", {"codec": "h264", "stored": (64, 48), "sizes": {(64, 48), (96, 72)}},
       frames=40, width=64, height=48, fps=F(25),
       note="20 frames of 64x48 then 20 of 96x72 (MPEG-TS segments with in-band SPS, concat demuxer, -c copy): "
            "every frame is expected at the first size")
def _resolution_change(out: Path, tmp: Path) -> None:
    lines = []
    for i, size in enumerate(((64, 48), (96, 72))):
        seg = tmp / f"seg{i}.ts"  # frames 0-19, then 20-39 (codes run on across the switch)
        _encode(seg, _graph(size, 25, 20 * (i + 1), post=f"trim=start_frame={20 * i},setpts=PTS-STARTPTS"), H264)
        lines += [f"file '{seg}'", "duration 0.8"]
    listing = tmp / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    ffmpeg("-f", "concat", "-safe", "0", "-i", listing, "-c", "copy", out)


# 200 frames 40 ms apart, then 40 frames at intervals 30, 50, 40 ms repeating (25 fps on average), ticks of 1/90000
CFR_THEN_VFR_PTS = ("if(lt(N,200),40*N,8000+120*floor((N-200)/3)+30*gte(mod(N-200,3),1)+50*gte(mod(N-200,3),2))"
                    "*90")


@_case("cfr_then_vfr_mp4", ".mp4", {"codec": "h264", "packets": 240, "cfr_first": 200, "steps_ms": {30.0, 40.0, 50.0}},
       # 240: the last frame counts for its own interval; the oracle (ffmpeg 5.1's fps=25 filter) gives 239: it
       # ends the stream at the last frame's timestamp
       frames=240, width=64, height=48, fps=F(25), vfr=True, stored_frames=240,
       note="200 frames at exactly 25 fps (8 s), then 40 frames with 30/50/40 ms intervals; frames = ffmpeg "
            "5.1's fps filter gives 239: it drops the last frame's own interval)")
def _cfr_then_vfr(out: Path, tmp: Path) -> None:
    _h264(out, 240, size=(64, 48), post=f"settb=1/90000,setpts='{CFR_THEN_VFR_PTS}'", args=VFR_TIMING)


@_case("audio_only_m4a", ".m4a", {"video_streams": 0, "audio_streams": 1},
       frames=None, width=0, height=0, fps=F(0), refused="no video stream", marker="", note="AAC in M4A")
def _audio_only(out: Path, tmp: Path) -> None:
    ffmpeg(*_audio_input(1.0), *AAC, out)


@_case("truncated_mp4", ".mp4", {"truncated": True},
       frames=None, width=160, height=120, fps=F(25), refused="truncated", marker="",
       note="a faststart (moov first) 160x120 noisy MP4 cut to half its bytes: the index promises samples the "
            "file no longer holds")
def _truncated(out: Path, tmp: Path) -> None:
    full = tmp / "full.mp4"
    _h264(full, 50, size=(160, 120), post="noise=alls=40:allf=t", args=("-movflags", "+faststart"))
    data = full.read_bytes()
    out.write_bytes(data[: len(data) // 2])


@_case("text_file_mp4", ".mp4", {"text": True},
       frames=None, width=0, height=0, fps=F(0), refused="text file", marker="", note="plain text named .mp4")
def _text(out: Path, tmp: Path) -> None:
    out.write_text("This is not a video.\nIt is a text file that someone named clip.mp4.\n" * 4)


CASES: tuple[str, ...] = tuple(_ENTRIES)


# ---------------------------------------------------------------------------------------------------- building

def case(name: str, root: Path) -> Case:
    """The expected values of a case and where :func:`build` puts its file (builds nothing)."""
    if name not in _ENTRIES:
        raise KeyError(f"unknown corpus case {name!r} (one of {', '.join(CASES)})")
    entry = _ENTRIES[name]
    exp = dict(entry.expect)
    frames, fps = exp.get("frames"), exp["fps"]
    exp.setdefault("duration", float(frames / fps) if frames else 0.0)
    return Case(name=name, path=Path(root) / f"{name}{entry.ext}", **exp)


def build(name: str, root: Path) -> Case:
    """Generate (or reuse) the file of one case in ``root``."""
    c = case(name, root)
    if c.path.exists():
        return c
    c.path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{threading.get_ident()}"
    tmp_out = c.path.with_name(f".{c.path.stem}.partial-{tag}{c.path.suffix}")
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=c.path.parent))
    try:
        _ENTRIES[name].make(tmp_out, scratch)
        os.replace(tmp_out, c.path)
    finally:
        tmp_out.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return c


def build_all(root: Path, names: Iterable[str] | None = None, workers: int | None = None) -> dict[str, Case]:
    """Build (or reuse) every case named (default: all), ``workers`` at a time (default: the CPU count, at most 4)."""
    todo = list(CASES if names is None else names)
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        built = list(pool.map(lambda n: build(n, Path(root)), todo))
    return {c.name: c for c in built}


# ---------------------------------------------------------------------------------------------------- oracle & reading

def _ppm_frames(data: bytes) -> list[np.ndarray]:
    """Split a stream of binary PPM (P6) images."""
    frames, pos = [], 0
    header = re.compile(rb"P6\s+(\d+)\s+(\d+)\s+255\s")
    while pos < len(data):
        m = header.match(data, pos)
        if not m:
            raise ValueError(f"not an 8-bit PPM stream at byte {pos}")
        w, h = int(m.group(1)), int(m.group(2))
        frames.append(np.frombuffer(data, np.uint8, w * h * 3, m.end()).reshape(h, w, 3))
        pos = m.end() + w * h * 3
    return frames


def decode_display(path: Path, vf: str = "", frames: int | None = None) -> list[np.ndarray]:
    """RGB frames of the first video stream as ffmpeg 5.1 shows them (autorotate, mirrors), through ``vf`` (the
    filters are not rebuilt at a resolution change: ``vf`` must start with a scale to one size then)."""
    args: list[str] = ["-reinit_filter", "0", "-i", str(path), "-map", "0:v:0"]
    if vf:
        args += ["-vf", vf]
    if frames:
        args += ["-frames:v", str(frames)]
    out = ffmpeg(*args, "-fps_mode", "passthrough", "-pix_fmt", "rgb24", "-c:v", "ppm", "-f", "image2pipe", "-")
    return _ppm_frames(out)


def _pillow_frames(path: Path) -> tuple[list[np.ndarray], list[int]]:
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames = [(np.asarray(f.convert("RGB")), int(f.info.get("duration", 0))) for f in ImageSequence.Iterator(im)]
    return [f for f, _ in frames], [d for _, d in frames]


def oracle_codes(c: Case) -> tuple[int, ...]:
    """Frame codes (``k % 30`` of the stored frame shown) of every output frame ffmpeg's fps filter makes of the
    case at ``c.fps``: ``ffmpeg -reinit_filter 0 -i FILE -map 0:v:0 -vf scale=32:32,fps=FPS -fps_mode passthrough``
    (the scale first and no filter rebuild so that a resolution change does not cut the fps filter short; the
    codes are read from the flat centre, so 32x32 loses nothing). ``len()`` of it is the oracle frame count.
    Animated WebP (which ffmpeg 5.1 cannot decode) is read with Pillow; its frames are evenly timed, so the stored
    frames are the answer."""
    if c.path.suffix == ".webp":
        frames, _ = _pillow_frames(c.path)
    else:
        frames = decode_display(c.path, f"scale=32:32:flags=area+accurate_rnd,fps={c.fps}")
    return tuple(frame_code(f) for f in frames)


# ---------------------------------------------------------------------------------------------------- verification

def _video_streams(info: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in info.get("streams", []) if s.get("codec_type") == "video"]


def _matrix(stream: dict[str, Any]) -> tuple[int, ...] | None:
    for sd in stream.get("side_data_list", []):
        if sd.get("side_data_type") == "Display Matrix":
            rows = [line.split(":", 1)[1] for line in sd["displaymatrix"].strip().splitlines()]
            return tuple(int(v) for row in rows for v in row.split())
    return None


def _timestamps(path: Path) -> tuple[list[float], int]:
    """(sorted presentation times of the first video stream's kept packets, number of packets flagged discard)."""
    packets = ffprobe(path, "-select_streams", "v:0", "-show_entries", "packet=pts_time,dts_time,flags")["packets"]
    kept = [p for p in packets if "D" not in p.get("flags", "")]
    times = sorted(float(p.get("pts_time", p.get("dts_time"))) for p in kept)
    return times, len(packets) - len(kept)


def _is_vfr(times: list[float]) -> bool:
    steps = np.diff(times)
    return bool(len(steps) and steps.max() - steps.min() > 1e-4)


def _pyav_matrix(path: Path) -> tuple[int, ...] | None:
    import av

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        for sd in frame.side_data:
            if "DISPLAYMATRIX" in str(sd.type):
                return struct.unpack("<9i", bytes(sd))
    return None


def _pyav_sizes(path: Path) -> set[tuple[int, int]]:
    import av

    with av.open(str(path)) as container:
        return {(f.width, f.height) for f in container.decode(video=0)}


def _b_frames(path: Path) -> bool:
    frames = ffprobe(path, "-select_streams", "v:0", "-show_entries", "frame=pict_type")["frames"]
    return any(f.get("pict_type") == "B" for f in frames)


def _display_width(w: int, sar: Fraction) -> int:
    return w if sar == 1 else 2 * round(w * sar / 2)


def _check_picture(c: Case) -> list[str]:
    """The first frame as displayed: size (after SAR) and markers."""
    if c.path.suffix == ".webp":
        first = _pillow_frames(c.path)[0][0]
    else:
        first = decode_display(c.path, frames=1)[0]
    h, w = first.shape[:2]
    problems = []
    if (_display_width(w, c.sar), h) != (c.width, c.height):
        problems.append(f"display size {_display_width(w, c.sar)}x{h} != {c.width}x{c.height}")
    if markers(first) != (c.marker, "top-right"):
        problems.append(f"markers {markers(first)} (white, black) in the displayed frame")
    return problems


def _decode_errors(path: Path) -> str:
    """What ffmpeg complains of while decoding the whole file (it exits 0 on a truncated MP4)."""
    proc = subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
                          capture_output=True, check=False)
    return proc.stderr.decode(errors="replace").strip() or ("" if proc.returncode == 0 else f"exit {proc.returncode}")


def _check_refused(c: Case, facts: dict[str, Any]) -> list[str]:
    problems = []
    if facts.get("text") and not all(ch.isprintable() or ch == "\n" for ch in c.path.read_text()):
        problems.append("not a text file")
    if facts.get("truncated") and not _decode_errors(c.path):
        problems.append("decodes without an error")
    if c.refused == "still image":
        frames = _pillow_frames(c.path)[0] if facts.get("reader") == "pillow" else decode_display(c.path)
        if len(frames) != 1:
            problems.append(f"{len(frames)} frames in a still image")
    return problems


def _check_stream(c: Case, info: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """ffprobe's view of the first video stream against the facts."""
    streams = info["streams"]
    videos = _video_streams(info)
    real = [s for s in videos if not s.get("disposition", {}).get("attached_pic")]
    counts = {"video_streams": len(real), "attached_pics": len(videos) - len(real),
              "audio_streams": sum(s["codec_type"] == "audio" for s in streams),
              "subtitle_streams": sum(s["codec_type"] == "subtitle" for s in streams)}
    want_counts = {"video_streams": 1, "attached_pics": 0, "audio_streams": int(c.has_audio), "subtitle_streams": 0}
    problems = [f"{k}={counts[k]} (want {facts.get(k, v)})" for k, v in want_counts.items()
                if counts[k] != facts.get(k, v)]
    if not videos:
        return problems
    v = videos[0]
    if len(videos) > 1 and [s.get("disposition", {}).get("default") for s in videos[:2]] != [1, 0]:
        problems.append("the first of two video streams is not the only default one")
    seen = {"codec": v.get("codec_name"), "pix_fmt": v.get("pix_fmt"), "profile": v.get("profile"),
            "tag": v.get("codec_tag_string"), "stored": (v.get("width"), v.get("height")),
            "sar": v.get("sample_aspect_ratio"), "transfer": v.get("color_transfer"),
            "primaries": v.get("color_primaries"), "range": v.get("color_range"),
            "field_order": v.get("field_order"), "rate": v.get("r_frame_rate"), "time_base": v.get("time_base"),
            "format": info["format"]["format_name"], "start": float(v.get("start_time", 0.0)),
            "audio_codec": next((s["codec_name"] for s in streams if s["codec_type"] == "audio"), None)}
    for key, want in facts.items():
        if key not in seen:
            continue
        got = seen[key]
        ok = want in str(got).split(",") if key == "format" else (
            abs(got - want) < 1e-3 if key == "start" else got == want)
        if not ok:
            problems.append(f"{key}={got!r} (want {want!r})")
    return problems


def _check_timing(c: Case, facts: dict[str, Any]) -> list[str]:
    problems = []
    times, discarded = _timestamps(c.path)
    if _is_vfr(times) != c.vfr:
        problems.append(f"vfr={_is_vfr(times)} (want {c.vfr})")
    packets = facts.get("packets", c.stored_frames if c.stored_frames is not None else c.frames)
    if len(times) + discarded != packets:
        problems.append(f"{len(times) + discarded} packets (want {packets})")
    steps = {round(float(d) * 1000, 1) for d in np.diff(times[facts.get("cfr_first", 0):])}
    if "steps_ms" in facts and steps != facts["steps_ms"]:
        problems.append(f"frame intervals {sorted(steps)} ms (want {sorted(facts['steps_ms'])})")
    if "cfr_first" in facts and len({round(float(d), 6) for d in np.diff(times[:facts["cfr_first"]])}) != 1:
        problems.append(f"the first {facts['cfr_first']} frames are not evenly spaced")
    if discarded != facts.get("discarded", 0):
        problems.append(f"{discarded} discarded packets (want {facts.get('discarded', 0)})")
    if facts.get("b_frames") and not _b_frames(c.path):
        problems.append("no B-frames")
    return problems


def _check_orientation(c: Case, info: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    v = _video_streams(info)[0]
    w, h = v["width"], v["height"]
    want = display_matrix(c.rotation, c.hflip, w, h) if (c.rotation or c.hflip) else None
    problems = []
    got = _matrix(v)
    if got != want and not (want is None and got == display_matrix(0, False, w, h)):
        problems.append(f"ffprobe display matrix {got} (want {want})")
    rotation = next((sd.get("rotation") for sd in v.get("side_data_list", []) if "rotation" in sd), 0)
    if rotation != facts.get("rotation", 0):
        problems.append(f"ffprobe rotation={rotation} (want {facts.get('rotation', 0)})")
    if want is not None and _pyav_matrix(c.path) != want:
        problems.append(f"PyAV display matrix {_pyav_matrix(c.path)} (want {want})")
    return problems


def _check_oracle(c: Case, first: int = 0) -> list[str]:
    codes = oracle_codes(c)
    # ffmpeg 5.1 drops the last frame's own duration where the container gives none (see the module docstring)
    problems = [] if len(codes) in (c.frames, c.frames - 1) else [f"oracle: {len(codes)} frames (want {c.frames})"]
    unwrapped = np.unwrap(np.array(codes, dtype=float), period=CODE_PERIOD)
    steps = np.diff(unwrapped)
    if c.vfr:
        if len(steps) and (steps.min() < 0 or steps.max() > 2):
            problems.append(f"oracle codes jump: {codes}")
    elif list(codes) != [(k + first) % CODE_PERIOD for k in range(len(codes))]:
        problems.append(f"codes {codes} are not {first}, {first + 1}, ...")
    return problems


def verify(c: Case) -> tuple[str, list[str]]:
    """(one line of facts, problems) for a built case."""
    facts = _ENTRIES[c.name].facts
    info = None if facts.get("reader") or facts.get("text") else ffprobe(c.path, "-show_format", "-show_streams")
    if c.refused:
        problems = _check_refused(c, facts)
        if info is not None and not facts.get("truncated"):
            problems += _check_stream(c, info, facts)
        return f"refused: {c.refused!r}", problems
    problems: list[str] = []
    if info is not None:
        problems += _check_stream(c, info, facts) + _check_timing(c, facts) + _check_orientation(c, info, facts)
    if "sizes" in facts and _pyav_sizes(c.path) != facts["sizes"]:
        problems.append(f"PyAV decodes sizes {_pyav_sizes(c.path)} (want {facts['sizes']})")
    problems += _check_picture(c) + _check_oracle(c, facts.get("first_code", 0))
    return _summary(c, info), problems


def _summary(c: Case, info: dict[str, Any] | None) -> str:
    if info is None:
        return f"{c.frames} frames {c.width}x{c.height} @ {c.fps} (Pillow)"
    v = _video_streams(info)[0]
    return (f"{v['codec_name']}/{v.get('pix_fmt')} {v['width']}x{v['height']} sar={v.get('sample_aspect_ratio', '-')} "
            f"start={float(v.get('start_time', 0)):.3f} -> {c.frames} frames {c.width}x{c.height} @ {c.fps}"
            f"{' vfr' if c.vfr else ''}{f' rot{c.rotation}' if c.rotation else ''}{' hflip' if c.hflip else ''}")


def main(argv: Sequence[str]) -> int:
    root = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="media_corpus-"))
    names = list(argv[1:]) or list(CASES)
    failed, start, building = 0, time.perf_counter(), 0.0
    for name in names:
        t0 = time.perf_counter()
        c = build(name, root)
        built = time.perf_counter() - t0
        building += built
        line, problems = verify(c)
        failed += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {name:28s} {built:5.2f}s  {line}")
        for p in problems:
            print(f"       - {p}")
    print(f"{len(names)} cases in {root}: built in {building:.1f}s, {time.perf_counter() - start:.1f}s with the "
          f"checks; {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
