"""Streaming H.264 encoding with ffmpeg (via ffmpeg-python), committed atomically to any fsspec URI.

:class:`VideoWriter` pipes RGB uint8 frames (``rawvideo rgb24`` on stdin) into ``libx264`` / ``yuv420p`` at the
exact source frame rate (a rational such as ``30000/1001``), with ``-movflags +faststart`` and ``-loglevel error``.
Memory is O(one frame): frames go straight into the pipe. Odd frame sizes are padded by one replicated row/column to
even ones (yuv420p needs even sizes).

Audio: with ``audio_from=`` (a source video URI) the source's first audio track is muxed in after the video is
encoded: stream-copied when the codec fits MP4 (AAC, MP3, AC-3, E-AC-3, ALAC, Opus, FLAC), re-encoded to AAC
otherwise, and trimmed to the video's duration. The video is never cut: no ``-shortest``; a shorter audio track
simply ends early. A source without audio gives a video-only file.

The file is encoded into a temporary folder beside a local target (in the system temp directory for a remote one,
whence it is uploaded) and only committed (a rename on the target's own filesystem, or upload + move) to the target
URI when :meth:`VideoWriter.close` succeeds; :meth:`VideoWriter.abort` (or an exception inside ``with``) leaves nothing.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional

import ffmpeg
import numpy as np

from pipelines.media import storage
from pipelines.media.timeline import FpsLike, fraction_str, to_fraction

log = logging.getLogger(__name__)

MP4_COPY_AUDIO = {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}


class EncodeError(RuntimeError):
    """ffmpeg failed, or the frames given cannot be encoded."""


@dataclass
class EncodeResult:
    uri: str
    frames: int
    fps: str  # rational "num/den"
    width: int
    height: int
    has_audio: bool
    audio_copied: bool
    bytes: int


class VideoWriter:
    """Stream frames into an H.264 MP4 at ``uri``.

    >>> with VideoWriter("memory://out/v.mp4", fps="30000/1001", audio_from="src.mp4") as w:
    ...     for frame in frames:          # (H, W, 3) uint8 RGB
    ...         w.write(frame)
    >>> w.result.frames
    """

    def __init__(
        self,
        uri: str,
        fps: FpsLike,
        *,
        audio_from: Optional[str] = None,
        audio_offset: float = 0.0,
        crf: int = 18,
        preset: str = "medium",
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        threads: Optional[int] = None,
        ffmpeg_cmd: str = "ffmpeg",
    ) -> None:
        self.uri = str(uri)
        self.fps = to_fraction(fps)
        self.audio_from = audio_from
        self.audio_offset = max(0.0, float(audio_offset))  # seconds into audio_from where the output starts
        self.crf = int(crf)
        self.preset = preset
        self.codec = codec
        self.pix_fmt = pix_fmt
        self.threads = threads
        self.ffmpeg_cmd = ffmpeg_cmd
        self.frames = 0
        self.result: Optional[EncodeResult] = None
        self._in_size: Optional[tuple[int, int]] = None  # (H, W) of the frames given
        self._out_size: Optional[tuple[int, int]] = None  # (H, W) encoded (even)
        self._proc: Optional[subprocess.Popen] = None
        self._tmpdir = storage.scratch_dir(self.uri, "enc")  # beside a local target: the commit is a rename
        self._video_tmp = os.path.join(self._tmpdir, "video.mp4")
        self._stderr = open(os.path.join(self._tmpdir, "ffmpeg.log"), "w+b")
        self._closed = False

    # -- writing -------------------------------------------------------------------------------------------------
    def _start(self, h: int, w: int) -> None:
        self._in_size = (h, w)
        oh, ow = h + (h % 2), w + (w % 2)
        self._out_size = (oh, ow)
        stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{ow}x{oh}",
                              framerate=fraction_str(self.fps))
        out_kwargs: dict[str, Any] = dict(vcodec=self.codec, pix_fmt=self.pix_fmt, crf=self.crf, preset=self.preset,
                                          movflags="+faststart", r=fraction_str(self.fps))
        if self.threads:
            out_kwargs["threads"] = int(self.threads)
        args = ffmpeg.compile(
            ffmpeg.output(stream, self._video_tmp, **out_kwargs).global_args("-loglevel", "error")
            .overwrite_output(),
            cmd=self.ffmpeg_cmd,
        )
        log.debug("ffmpeg: %s", " ".join(args))
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        if self._closed:
            raise EncodeError("write() after close()")
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise EncodeError(f"frames must be (H, W, 3) RGB, got shape {frame.shape}")
        if frame.dtype != np.uint8:
            raise EncodeError(f"frames must be uint8, got {frame.dtype}")
        h, w = frame.shape[:2]
        if self._proc is None:
            self._start(h, w)
        elif (h, w) != self._in_size:
            raise EncodeError(f"frame {self.frames} is {w}x{h}, earlier frames were "
                              f"{self._in_size[1]}x{self._in_size[0]}")
        oh, ow = self._out_size
        if (oh, ow) != (h, w):
            frame = np.pad(frame, ((0, oh - h), (0, ow - w), (0, 0)), mode="edge")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except (BrokenPipeError, OSError) as exc:
            self._proc.wait()
            raise EncodeError(f"ffmpeg stopped while encoding {self.uri}: {self._log_text() or exc}") from exc
        self.frames += 1

    def write_frames(self, frames: Iterable[np.ndarray]) -> None:
        for f in frames:
            self.write(f)

    # -- finishing -----------------------------------------------------------------------------------------------
    def close(self) -> EncodeResult:
        """Finish encoding, mux audio if asked, and commit atomically to ``uri``."""
        if self._closed:
            if self.result is None:
                raise EncodeError("writer was aborted")
            return self.result
        self._closed = True
        try:
            if self._proc is None or self.frames == 0:
                raise EncodeError(f"no frames were written to {self.uri}")
            self._proc.stdin.close()
            rc = self._proc.wait()
            if rc != 0:
                raise EncodeError(f"ffmpeg exited with {rc} encoding {self.uri}: {self._log_text()}")
            final, has_audio, copied = self._video_tmp, False, False
            if self.audio_from:
                final, has_audio, copied = self._mux_audio()
            size = os.path.getsize(final)
            with storage.atomic_local_file(self.uri, suffix=".mp4") as target:
                os.replace(final, target)
            oh, ow = self._out_size
            self.result = EncodeResult(self.uri, self.frames, fraction_str(self.fps), ow, oh, has_audio, copied, size)
            return self.result
        finally:
            self._cleanup()

    def abort(self) -> None:
        """Stop ffmpeg and drop everything; nothing appears at ``uri``."""
        self._closed = True
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(Exception):
                self._proc.stdin.close()
            self._proc.kill()
            self._proc.wait()
        self._cleanup()

    def _mux_audio(self) -> tuple[str, bool, bool]:
        with storage.local_copy(self.audio_from) as src:
            try:
                info = ffmpeg.probe(src, cmd=self.ffmpeg_cmd.replace("ffmpeg", "ffprobe"))
            except ffmpeg.Error as exc:
                raise EncodeError(f"cannot probe audio source {self.audio_from}: {_stderr_text(exc)}") from exc
            audio = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
            if not audio:
                return self._video_tmp, False, False
            copy = audio[0].get("codec_name") in MP4_COPY_AUDIO
            duration = float(Fraction(self.frames) / self.fps)
            out = os.path.join(self._tmpdir, "muxed.mp4")
            v = ffmpeg.input(self._video_tmp)
            a_kw: dict[str, Any] = {"t": f"{duration:.6f}"}
            if self.audio_offset > 0:
                a_kw["ss"] = f"{self.audio_offset:.6f}"
            a = ffmpeg.input(src, **a_kw)
            kwargs: dict[str, Any] = {"c:v": "copy", "c:a": "copy" if copy else "aac", "movflags": "+faststart"}
            args = ffmpeg.compile(
                ffmpeg.output(v["v:0"], a["a:0"], out, **kwargs).global_args("-loglevel", "error", "-nostdin")
                .overwrite_output(),
                cmd=self.ffmpeg_cmd,
            )
            proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if proc.returncode != 0:
                raise EncodeError(f"muxing audio from {self.audio_from} failed: "
                                  f"{proc.stderr.decode(errors='replace').strip()}")
            return out, True, copy

    def _log_text(self) -> str:
        with contextlib.suppress(Exception):
            self._stderr.flush()
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace").strip()[-2000:]
        return ""

    def _cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self._stderr.close()
        for name in os.listdir(self._tmpdir) if os.path.isdir(self._tmpdir) else []:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._tmpdir, name))
        with contextlib.suppress(OSError):
            os.rmdir(self._tmpdir)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # a forgotten writer must not leave ffmpeg running
        if not self._closed:
            with contextlib.suppress(Exception):
                self.abort()


def _stderr_text(exc: ffmpeg.Error) -> str:
    return (exc.stderr or b"").decode(errors="replace").strip()[-2000:]


def probe_output(path_or_uri: str) -> dict:
    """Facts about an encoded video (ffprobe): frames, fps (``"num/den"``), codec, pix_fmt, size, audio.

    ``frames`` is the container's exact frame count (``nb_frames``), counted by decoding when absent.
    """
    with storage.local_copy(str(path_or_uri)) as path:
        try:
            info = ffmpeg.probe(path)
        except ffmpeg.Error as exc:
            raise EncodeError(f"ffprobe failed on {path_or_uri}: {_stderr_text(exc)}") from exc
        streams = info.get("streams", [])
        video = [s for s in streams if s.get("codec_type") == "video"]
        if not video:
            raise EncodeError(f"{path_or_uri} has no video stream")
        v = video[0]
        frames = v.get("nb_frames")
        if frames in (None, "N/A"):
            counted = ffmpeg.probe(path, select_streams="v:0", count_frames=None)["streams"][0]
            frames = counted.get("nb_read_frames")
        audio = [s for s in streams if s.get("codec_type") == "audio"]
        fps = Fraction(v.get("avg_frame_rate") or v.get("r_frame_rate"))
        return {
            "frames": int(frames),
            "fps": fraction_str(fps),
            "r_frame_rate": v.get("r_frame_rate"),
            "codec": v.get("codec_name"),
            "pix_fmt": v.get("pix_fmt"),
            "width": int(v.get("width")),
            "height": int(v.get("height")),
            "duration": float(info.get("format", {}).get("duration") or 0.0),
            "has_audio": bool(audio),
            "audio_codec": audio[0].get("codec_name") if audio else None,
            "audio_duration": float(audio[0].get("duration") or 0.0) if audio else None,
            "format_name": info.get("format", {}).get("format_name"),
        }


def faststart(path_or_uri: str) -> bool:
    """True when the MP4's ``moov`` atom precedes ``mdat`` (``+faststart``)."""
    with storage.local_copy(str(path_or_uri)) as path:
        with open(path, "rb") as f:
            pos = 0
            size_total = os.path.getsize(path)
            while pos < size_total:
                f.seek(pos)
                header = f.read(16)
                if len(header) < 8:
                    return False
                size = int.from_bytes(header[:4], "big")
                kind = header[4:8]
                if kind == b"moov":
                    return True
                if kind == b"mdat":
                    return False
                if size == 1:
                    size = int.from_bytes(header[8:16], "big")
                if size < 8:
                    return False
                pos += size
    return False
