"""Throughput of the prepare stages (frames/s: decode, pose, masks, render) and peak RSS on a 720p input.

The input is synthesised from the fixture frames (case-1 source person on a 1280x720 canvas, looped) with ffmpeg,
then processed window by window (24 frames) through the same functions as
:func:`pipelines.conditioning.window_inputs.prepare_window`:
memory must stay O(window), not O(video).

Memory is reported three ways: the process peak RSS (``ru_maxrss``), the peak RSS sampled during each stage (a
background thread reads ``/proc/self/statm`` every few ms) and, with ``--tracemalloc``, the peak of traced Python and
numpy allocations per stage (MediaPipe's own C++ buffers are not traced). ``--compare`` runs 100 and 300 frames in
separate processes and prints both peaks (they should be about equal).

    python benchmarks/prepare_throughput.py [--frames 300] [--tracemalloc] [--compare]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import conditioning as P
from pipelines import media as M  # noqa: E402
from pipelines.conditioning.align import aligned_masks  # noqa: E402
from pipelines.media.video import release_memory  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
WINDOW = 24


def _shared() -> Path:
    env = os.environ.get("MF_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Samples the current RSS in a background thread; ``stage(name)`` records the peak seen during a stage."""

    def __init__(self, period: float = 0.004):
        self.period, self.current, self.peaks = period, 0.0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.current = max(self.current, rss_mib())
            time.sleep(self.period)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()

    @contextmanager
    def stage(self, name: str, times: dict, traced: dict | None):
        self.current = rss_mib()
        if traced is not None:
            tracemalloc.reset_peak()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            times[name] = times.get(name, 0.0) + time.perf_counter() - t0
            self.current = max(self.current, rss_mib())
            self.peaks[name] = max(self.peaks.get(name, 0.0), self.current)
            if traced is not None:
                traced[name] = max(traced.get(name, 0.0), tracemalloc.get_traced_memory()[1] / 2**20)


def synth_video(path: Path, case: Path, n: int = 300, w: int = 1280, h: int = 720) -> Path:
    frames = M.read_frames(str(case / "source_images"), range(24))
    proc = subprocess.Popen([shutil.which("ffmpeg"), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo",
                             "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", "25", "-i", "-", "-c:v", "libx264",
                             "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)], stdin=subprocess.PIPE)
    canvas = np.full((h, w, 3), 60, np.uint8)
    for i in range(n):
        f = M.fit_frame(frames[i % 24], (h, h))
        canvas[:, (w - h) // 2:(w + h) // 2] = f
        proc.stdin.write(canvas.tobytes())
    proc.stdin.close()
    proc.wait()
    return path


def run(n_frames: int, trace: bool) -> dict:
    case = _shared() / "fixtures" / "motionfollower_cases" / "case-1"
    tmp = Path(tempfile.mkdtemp(prefix="mfbench"))
    try:
        src = str(synth_video(tmp / "src720.mp4", case, n_frames))
        drv = str(case / "target_images")
        rss0 = rss_mib()
        traced = {} if trace else None
        if trace:
            tracemalloc.start()
        sampler = RssSampler().start()
        t: dict = {}
        s_info, d_info = M.probe_video(src), M.probe_video(drv)
        n, dmap = P.driving_index_map(s_info, d_info, "loop")
        with sampler.stage("reference", {}, traced):
            transform = P.reference_alignment(src, drv, list(range(n)), dmap, 512)
        ext = P.get_extractor("mediapipe")
        for start in range(0, n, WINDOW):
            ks = list(range(start, min(n, start + WINDOW)))
            with sampler.stage("decode", t, traced):
                sf = M.read_fitted_frames(src, ks, 512, info=s_info)
                df = M.read_fitted_frames(drv, [dmap[k] for k in ks], 512, info=d_info)
            with sampler.stage("pose", t, traced):
                s_track, s_masks = P.extract_poses(sf, s_info.fps, ext, with_masks=True)
                d_track, d_masks = P.extract_poses(df, d_info.fps, ext, with_masks=True)
                aligned = P.apply_alignment(d_track, transform, s_masks, d_masks)
            with sampler.stage("masks", t, traced):
                aligned_masks(d_masks, d_track.body, transform, s_masks, source_body=s_track.body,
                              target_body=aligned.body)
            with sampler.stage("render", t, traced):
                P.render_poses(s_track, 512)
                P.render_poses(aligned, 512)
            del sf, df, s_masks, d_masks
            release_memory()  # as prepare_window does at the end of every window
        sampler.stop()
        return {"n": n, "info": s_info, "times": t, "stage_peaks": sampler.peaks, "traced": traced,
                "rss0": rss0, "peak": peak_rss_mib()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--tracemalloc", action="store_true", help="also trace Python/numpy allocations per stage")
    ap.add_argument("--compare", action="store_true", help="peak RSS for 100 and 300 frames (separate processes)")
    ap.add_argument("--peak-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compare:
        for n in (100, 300):
            out = subprocess.run([sys.executable, __file__, "--frames", str(n), "--peak-only"], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            print(f"{n:4d} frames 720p: {out}")
        return 0
    r = run(args.frames, args.tracemalloc)
    n, info = r["n"], r["info"]
    if args.peak_only:
        print(f"peak RSS {r['peak']:.0f} MiB (after imports {r['rss0']:.0f} MiB)")
        return 0
    print(f"input: {n} frames {info.width}x{info.height} @ {info.fps:g} fps -> 512x512, window {WINDOW}")
    print("stage    frames/s   peak RSS in stage (MiB)" + ("   traced peak (MiB)" if r["traced"] else ""))
    print("(source+driving per output frame; pose includes segmentation and the mirrored pass)")
    if r["traced"]:
        print(f"{'reference':9s}{'':>9s}   {r['stage_peaks']['reference']:10.0f}   {r['traced']['reference']:10.1f}")
    for k, v in r["times"].items():
        line = f"{k:8s} {n / v:9.1f}   {r['stage_peaks'][k]:10.0f}"
        if r["traced"]:
            line += f"   {r['traced'][k]:10.1f}"
        print(line)
    print(f"total    {n / sum(r['times'].values()):9.1f}")
    print(f"peak RSS {r['peak']:.0f} MiB (after imports {r['rss0']:.0f} MiB); the decoded 720p video alone would be "
          f"{n * info.width * info.height * 3 / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
