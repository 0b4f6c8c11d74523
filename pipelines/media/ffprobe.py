"""What a video file is, from ffprobe alone — nothing is decoded: container, codec, size, frame count, duration, rate,
whether the rate is variable, audio. Every video input passes here before a decoder opens it.

- Only the containers we mean to accept pass: MP4/MOV, Matroska/WebM and AVI. ffprobe itself is held to them
  (``-format_whitelist``) and to plain files (``-protocol_whitelist file``), so a playlist (HLS), a concat script or
  a file naming other files or URLs is refused before anything follows it.
- The path is handed over as ``file:<absolute path>``: it can never be read as an option or a protocol.
- A variable frame rate is refused with a clear error (re-encode at a constant rate): the pipeline maps frames by
  index at one rate, so a variable rate would silently shift the motion in time.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

from pipelines.media.errors import InputError

CONTAINERS = ("mov", "mp4", "matroska", "webm", "avi")  # demuxer names (ffprobe's format_name lists aliases)
FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi"
ACCEPTED = "MP4/MOV, Matroska/WebM, AVI"
PROBE_PACKETS = 120  # packets read to tell a variable frame rate (no decoding)
VFR_TOLERANCE = 0.25  # a frame interval this far from the median, in more than VFR_SHARE of frames: variable
VFR_SHARE = 0.1
TIMEOUT_S = 60


@dataclass(frozen=True)
class MediaInfo:
    format_name: str
    codec: str
    width: int
    height: int
    frames: int  # the container's count, else duration × rate
    duration: float  # seconds
    fps: float
    variable_fps: bool
    has_audio: bool


def _rate(text: Optional[str]) -> float:
    try:
        value = Fraction(text or "0")
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value) if value > 0 else 0.0


def _run(path: str) -> dict:
    target = "file:" + os.path.abspath(path)
    cmd = ["ffprobe", "-v", "error", "-protocol_whitelist", "file", "-format_whitelist", FORMAT_WHITELIST,
           "-read_intervals", f"%+#{PROBE_PACKETS}", "-show_entries",
           "format=format_name,duration:stream=index,codec_type,codec_name,width,height,nb_frames,avg_frame_rate,"
           "r_frame_rate,duration:packet=stream_index,pts_time", "-of", "json", target]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InputError(path, "probing the file took too long") from None
    if out.returncode != 0:
        refused = re.search(r"\[([\w,]+) @ [^\]]*\] Format not on whitelist", out.stderr or "")
        if refused:
            raise InputError(path, f"container {refused.group(1)!r} is not accepted ({ACCEPTED})")
        raise InputError(path, "not a readable video (unknown format, corrupt or truncated)")
    return json.loads(out.stdout or "{}")


def _variable(packets: list[dict], index: int) -> bool:
    pts = sorted(float(p["pts_time"]) for p in packets
                 if p.get("stream_index") == index and p.get("pts_time") not in (None, "N/A"))
    deltas = [b - a for a, b in zip(pts, pts[1:]) if b > a]
    if len(deltas) < 8:
        return False
    median = sorted(deltas)[len(deltas) // 2]
    off = sum(1 for d in deltas if abs(d - median) > VFR_TOLERANCE * median)
    return off > VFR_SHARE * len(deltas)


def probe_media(path: str) -> MediaInfo:
    """:class:`MediaInfo` of a local video file; :class:`InputError` for anything we do not accept (see the module
    docstring). Remote URIs are fetched first by :func:`pipelines.media.video.local_video`."""
    meta = _run(path)
    fmt = (meta.get("format") or {}).get("format_name", "")
    if not set(fmt.split(",")) & set(CONTAINERS):
        raise InputError(path, f"container {fmt or 'unknown'!r} is not accepted ({ACCEPTED})")
    streams = meta.get("streams") or []
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    if video is None:
        raise InputError(path, "no video stream in the file (audio-only or not a video)")
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    duration = float(video.get("duration") or (meta.get("format") or {}).get("duration") or 0.0)
    frames = int(video.get("nb_frames") or 0) or int(round(duration * fps))
    info = MediaInfo(format_name=fmt, codec=video.get("codec_name") or "", width=int(video.get("width") or 0),
                     height=int(video.get("height") or 0), frames=frames, duration=duration, fps=fps,
                     variable_fps=_variable(meta.get("packets") or [], video.get("index")),
                     has_audio=any(s.get("codec_type") == "audio" for s in streams))
    if info.variable_fps:
        raise InputError(path, f"variable frame rate (about {fps:.3g} fps on average): re-encode it at a constant "
                               f"rate first, e.g. ffmpeg -i IN -vf fps={round(fps) or 25} -c:a copy OUT.mp4")
    return info
