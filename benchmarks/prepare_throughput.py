"""Throughput of the prepare stages (frames/s: decode, pose, masks, render) and peak RSS on a 300-frame 720p input.

The input is synthesised from the fixture frames (case-1 source person on a 1280x720 canvas, looped) with ffmpeg,
then processed window by window (24 frames) as the batch pipeline does: memory stays O(window).
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import prepare as P  # noqa: E402
from pipelines.masks import aligned_masks  # noqa: E402


def _shared() -> Path:
    env = os.environ.get("MF_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def synth_video(path: Path, case: Path, n: int = 300, w: int = 1280, h: int = 720) -> Path:
    frames = P.read_frames(str(case / "source_images"), range(24))
    proc = subprocess.Popen([shutil.which("ffmpeg"), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo",
                             "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", "25", "-i", "-", "-c:v", "libx264",
                             "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)], stdin=subprocess.PIPE)
    canvas = np.full((h, w, 3), 60, np.uint8)
    for i in range(n):
        f = P.fit_frame(frames[i % 24], (h, h))
        canvas[:, (w - h) // 2:(w + h) // 2] = f
        proc.stdin.write(canvas.tobytes())
    proc.stdin.close()
    proc.wait()
    return path


def main() -> int:
    case = _shared() / "fixtures" / "motionfollower_cases" / "case-1"
    tmp = Path(tempfile.mkdtemp(prefix="mfbench"))
    src = synth_video(tmp / "src720.mp4", case)
    drv = str(case / "target_images")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s_info, d_info = P.probe_video(str(src)), P.probe_video(drv)
    n, dmap = P.driving_index_map(s_info, d_info, "loop")
    transform = P.reference_alignment(str(src), drv, list(range(n)), dmap, 512)
    t = {"decode": 0.0, "pose": 0.0, "masks": 0.0, "render": 0.0}
    window = 24
    for start in range(0, n, window):
        ks = list(range(start, min(n, start + window)))
        t0 = time.perf_counter()
        sf = P.fit_frames(P.read_frames(str(src), ks, info=s_info), 512)
        df = P.fit_frames(P.read_frames(drv, [dmap[k] for k in ks], info=d_info), 512)
        t1 = time.perf_counter()
        s_track, s_masks = P.extract_poses(sf, s_info.fps, with_masks=True)
        d_track, d_masks = P.extract_poses(df, d_info.fps, with_masks=True)
        aligned = P.apply_alignment(d_track, transform, s_masks, d_masks)
        t2 = time.perf_counter()
        pm = aligned_masks(d_masks, d_track.body, transform, s_masks)
        t3 = time.perf_counter()
        P.render_poses(s_track, 512)
        P.render_poses(aligned, 512)
        t4 = time.perf_counter()
        t["decode"] += t1 - t0
        t["pose"] += t2 - t1
        t["masks"] += t3 - t2
        t["render"] += t4 - t3
        del sf, df, s_masks, d_masks, pm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"input: {n} frames {s_info.width}x{s_info.height} @ {s_info.fps:g} fps -> 512x512, window {window}")
    print("stage    frames/s   (source+driving per output frame; pose includes segmentation)")
    for k, v in t.items():
        print(f"{k:8s} {n / v:9.1f}")
    print(f"total    {n / sum(t.values()):9.1f}")
    print(f"peak RSS {peak:.0f} MiB (after imports {rss0:.0f} MiB); the decoded 720p video alone would be "
          f"{n * s_info.width * s_info.height * 3 / 2**20:.0f} MiB")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
