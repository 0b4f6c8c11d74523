"""Shared helpers of the pipeline benchmarks: demo-style inputs, a local Ray, RSS sampling of driver and workers."""
from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_source(path: Path, frames: int, fps: int = 24, size=(320, 256)) -> np.ndarray:
    """The demo portrait with camera movement, ``frames`` long, H.264 with audio; returns frame 0."""
    from jobs.commands.demo import encode_with_tone, source_frames

    first = None
    if not path.exists():
        # generate in chunks of one pan period so a 1,000-frame source never sits in memory at once
        arr = source_frames(min(frames, 120), size)
        reps = -(-frames // len(arr))
        tiled = np.concatenate([arr, arr[::-1]] * (reps // 2 + 1))[:frames]
        encode_with_tone(tiled, fps, str(path))
        first = tiled[0]
        del tiled, arr
    if first is None:
        first = source_frames(1, size)[0]
    return first


def make_track(path: Path, first: np.ndarray, frames: int, fps: int = 24) -> None:
    from jobs.commands.demo import waving_track
    from pipelines.conditioning.poses.keypoints import write_pose_track

    if not path.exists():
        write_pose_track(waving_track(first, frames, fps), str(path))


def demo_manifest(work: Path, requests: int, frames: int, fps: int = 24, **params) -> str:
    """``work/requests.jsonl``: ``requests`` requests (ids r0.., seed = k) of the demo source and waving track,
    ``frames`` long at ``fps``, each with ``params`` (steps, size, window, overlap, ...). Returns its path."""
    from pipelines.batch.requests import write_manifest

    src, drv = work / "source.mp4", work / "driving.parquet"
    make_track(drv, make_source(src, frames, fps=fps), frames, fps=fps)
    rows = [{"request_id": f"r{k}", "source": str(src), "driving": str(drv), "seed": k, **params}
            for k in range(requests)]
    path = work / "requests.jsonl"
    write_manifest(rows, str(path))
    return str(path)


def start_ray(num_cpus: int | None = None):
    import ray

    from jobs.runtime import connect_ray

    connect_ray(None, num_cpus=num_cpus, object_store_memory=512 * 1024 * 1024)
    return ray


@dataclass
class RssSampler:
    """Samples the RSS of this process (the driver) and of every Ray worker process below it."""

    interval: float = 0.25
    driver_peak: int = 0
    worker_peak: int = 0  # largest single worker process
    workers_total_peak: int = 0  # all worker processes together
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            try:
                self.driver_peak = max(self.driver_peak, me.memory_info().rss)
                total = 0
                for p in me.children(recursive=True):
                    try:
                        name = p.name()
                        if name.startswith("ray::") or "default_worker" in " ".join(p.cmdline()[:3]):
                            rss = p.memory_info().rss
                            total += rss
                            self.worker_peak = max(self.worker_peak, rss)
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                self.workers_total_peak = max(self.workers_total_peak, total)
                self.samples += 1
            except Exception:  # noqa: BLE001
                pass
            self._stop.wait(self.interval)


def probe_frames(path: str) -> tuple[int, str]:
    import json

    out = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_packets,r_frame_rate", "-of", "json", path],
                         capture_output=True, text=True, check=True).stdout
    s = json.loads(out)["streams"][0]
    return int(s["nb_read_packets"]), s["r_frame_rate"]


MiB = 1024 * 1024
