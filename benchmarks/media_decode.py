"""Decode throughput per path, frames/s on one core, against ``ffmpeg -f null`` on the same file (the floor).

Paths: ``ffmpeg -threads 1 -f null`` (decode only, no conversion); the pipeline's normaliser
(:func:`pipelines.media.read_frames`: PyAV decode, RGB24, display geometry, window by window as the prepare stage
reads them, 24 frames a window); PyAV alone (decode + RGB24, sequential); decord 0.6 (``get_batch`` in chunks of 32,
one thread) when it is installed. Inputs are made with ffmpeg: H.264 (x264, yuv420p, B-frames) at 512x512 and
1920x1080, plus (``--all``) an HEVC 10-bit PQ clip (tone-mapped), a VFR phone-style clip and an anamorphic one.
Everything runs pinned to one core (``sched_setaffinity``).

    python benchmarks/media_decode.py [--seconds 10] [--all]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import media as M  # noqa: E402

WINDOW = 24


def _make(path: Path, size: str, seconds: float, extra: list[str], vf: str = "") -> Path:
    if not path.exists():
        src = f"testsrc2=size={size}:rate=30"
        args = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", src, "-t", str(seconds)]
        args += (["-vf", vf] if vf else []) + extra + [str(path)]
        subprocess.run(args, check=True)
    return path


def inputs(root: Path, seconds: float, everything: bool) -> list[tuple[str, Path]]:
    h264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-bf", "3"]
    out = [("h264 512x512", _make(root / "h264_512.mp4", "512x512", seconds, h264)),
           ("h264 1920x1080", _make(root / "h264_1080.mp4", "1920x1080", seconds, h264))]
    if everything:
        hdr = ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le", "-color_primaries", "bt2020",
               "-color_trc", "smpte2084", "-colorspace", "bt2020nc", "-x265-params", "log-level=error"]
        vfr = h264 + ["-fps_mode", "passthrough"]
        out += [("hevc 10-bit PQ 1280x720", _make(root / "pq_720.mp4", "1280x720", seconds, hdr)),
                ("h264 VFR 1280x720", _make(root / "vfr_720.mp4", "1280x720", seconds, vfr,
                                            "select='lt(mod(n,30),20)+not(mod(n,2))'")),
                ("h264 anamorphic 720x480", _make(root / "sar_480.mp4", "720x480", seconds, h264, "setsar=32/27"))]
    return out


def ffmpeg_null(path: Path) -> tuple[int, float]:
    t = time.perf_counter()
    out = subprocess.run(["ffmpeg", "-v", "error", "-threads", "1", "-i", str(path), "-map", "0:v:0", "-f", "null",
                          "-", "-progress", "pipe:1", "-nostats"], capture_output=True, text=True, check=True).stdout
    frames = int([line for line in out.splitlines() if line.startswith("frame=")][-1].split("=")[1])
    return frames, time.perf_counter() - t


def normaliser(path: Path) -> tuple[int, float]:
    t = time.perf_counter()
    info = M.probe_video(str(path))
    for s in range(0, info.frames, WINDOW):
        M.read_frames(str(path), range(s, min(info.frames, s + WINDOW)), info=info)
    return info.frames, time.perf_counter() - t


def pyav(path: Path) -> tuple[int, float]:
    import av

    t = time.perf_counter()
    n = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        for f in c.decode(s):
            f.to_ndarray(format="rgb24", threads=1)
            n += 1
    return n, time.perf_counter() - t


def decord_batches(path: Path) -> tuple[int, float] | None:
    try:
        import decord
    except ImportError:
        return None
    t = time.perf_counter()
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    for s in range(0, n, 32):
        vr.get_batch(list(range(s, min(n, s + 32)))).asnumpy()
    return n, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each input (30 fps)")
    ap.add_argument("--all", action="store_true", help="also HDR, VFR and anamorphic inputs")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    root = Path(tempfile.mkdtemp(prefix="mf-decode-bench-"))
    print(f"one core, best of {args.repeat}; frames/s (fraction of ffmpeg -f null)")
    for label, path in inputs(root, args.seconds, args.all):
        rows = {}
        for name, fn in (("ffmpeg -f null", ffmpeg_null), ("normaliser", normaliser), ("pyav", pyav),
                         ("decord", decord_batches)):
            runs = [fn(path) for _ in range(args.repeat)]
            if runs[0] is None:
                continue
            rows[name] = runs[0][0] / min(r[1] for r in runs)
        floor = rows["ffmpeg -f null"]
        cells = "  ".join(f"{k} {v:7.0f} ({v / floor:4.2f})" for k, v in rows.items())
        print(f"{label:26s} {cells}")


if __name__ == "__main__":
    main()
