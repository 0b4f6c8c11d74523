"""Audio/video drift through the pipeline's timing path on a long variable-rate clip.

A phone-style clip is made with ffmpeg: a 60 fps base thinned to a variable rate (30 fps, stretches at 15 fps,
60 fps bursts, timestamps kept), a white flash every ``--every`` seconds on an otherwise dark frame, and an AAC
track that beeps at the same instants. It goes through what a request does to time: probed and resampled onto its
nominal-rate grid (:func:`pipelines.media.probe_video`), decoded window by window (:func:`read_frames`), written
by :class:`~pipelines.media.encode.VideoWriter` at the grid's rate with the source's audio from the first output
frame's time (``plan.audio_offset``, :func:`pipelines.media.timeline.slot_time`) — the stitch stage's writer.
Then each flash's time in the output (frame index / rate) is compared with its beep's onset in the output's audio.

    python benchmarks/media_sync.py [--minutes 5] [--every 10] [--start-frame 0]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import media as M  # noqa: E402
from pipelines.media.encode import VideoWriter  # noqa: E402
from pipelines.media.timeline import slot_time  # noqa: E402

BEEP_S = 0.05
RATE = 48000
# keep: every other 60 fps frame (30 fps), but only every 4th in the first 2 s of each 10 s (15 fps) and every frame
# in 6-7 s (60 fps); the flash frames (n multiple of 60 * every) are always kept
KEEP = "if(lt(mod(t,10),2),not(mod(n,4)),if(between(mod(t,10),6,7),1,not(mod(n,2))))"


def make_clip(path: Path, minutes: float, every: float) -> None:
    seconds = minutes * 60
    flash = f"lt(mod(t+0.0001,{every}),0.001)"
    video = (f"color=c=0x202020:s=64x64:r=60:d={seconds},drawbox=c=white:t=fill:enable='{flash}',"
             f"select='{KEEP}+eq(mod(n,{int(60 * every)}),0)'")
    audio = f"aevalsrc='if(lt(mod(t,{every}),{BEEP_S}),0.8*sin(2*PI*1000*t),0)':s={RATE}:d={seconds}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio,
                    "-fps_mode", "passthrough", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "96k", str(path)], check=True)


def flash_times(path: Path) -> list[float]:
    info = M.probe_video(str(path))
    out, prev = [], False
    for s in range(0, info.frames, 240):
        frames = M.read_frames(str(path), range(s, min(info.frames, s + 240)), info=info)
        for j, f in enumerate(frames):
            lit = float(f.mean()) > 128
            if lit and not prev:
                out.append((s + j) / info.fps)
            prev = lit
    return out


def beep_times(path: Path) -> list[float]:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", str(RATE),
                          "-f", "s16le", "-"], capture_output=True, check=True).stdout
    a = np.abs(np.frombuffer(raw, np.int16).astype(np.float32))
    loud = a > 0.3 * 32767
    onsets, last = [], -1e9
    for i in np.flatnonzero(loud):
        if i - last > RATE * BEEP_S * 4:
            onsets.append(i / RATE)
        last = i
    return onsets


def run(minutes: float, every: float, start_frame: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="mf-sync-"))
    src, out = root / "phone_vfr.mp4", root / "edited.mp4"
    t0 = time.perf_counter()
    make_clip(src, minutes, every)
    info = M.probe_video(str(src))
    media = info.media
    print(f"source: {media.stored_frames} stored frames over {info.duration:.1f} s, variable rate "
          f"{info.resampled}; grid {info.fps:g} fps, {info.frames} frames (made in {time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    with VideoWriter(str(out), info.rate, audio_from=str(src), audio_offset=slot_time(info.timeline, start_frame),
                     preset="ultrafast") as w:
        for s in range(start_frame, info.frames, 24):
            w.write_frames(M.read_frames(str(src), range(s, min(info.frames, s + 24)), info=info))
    print(f"normalised and written in {time.perf_counter() - t0:.1f} s: {w.result.frames} frames at {w.result.fps}")
    flashes, beeps = flash_times(out), beep_times(out)
    pairs = [(f, min(beeps, key=lambda b, f=f: abs(b - f))) for f in flashes] if beeps else []
    drift = np.array([f - b for f, b in pairs])
    frame_s = 1 / info.fps
    print(f"{len(flashes)} flashes, {len(beeps)} beeps in the output")
    if len(drift):
        print(f"flash - beep: first {drift[0] * 1000:+.1f} ms, last {drift[-1] * 1000:+.1f} ms, "
              f"max |drift| {np.abs(drift).max() * 1000:.1f} ms = {np.abs(drift).max() / frame_s:.2f} frames "
              f"(one frame = {frame_s * 1000:.1f} ms); trend over the clip {(drift[-1] - drift[0]) * 1000:+.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between flashes/beeps")
    ap.add_argument("--start-frame", type=int, default=0, help="first output frame (a request's frame_start)")
    args = ap.parse_args()
    run(args.minutes, args.every, args.start_frame)


if __name__ == "__main__":
    main()
