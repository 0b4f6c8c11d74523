"""Peak bytes of intermediate storage (``<out>/windows/``) during a run of 8 requests, with the windows deleted once
each request is committed (the default) and kept (``--keep-windows``, the behaviour before deletion existed).

    python benchmarks/intermediate_storage.py [--requests 8] [--frames 40] [--size 128]

Prints one JSON line per mode: peak and final bytes under windows/, the output bytes the run reports, wall time.
Inputs are made here (the demo portrait and a waving pose track): no figure is tuned on any fixture.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
import time
from pathlib import Path

from _pipeline_common import demo_manifest, start_ray


def tree_bytes(root: Path) -> int:
    total = 0
    for p in root.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except FileNotFoundError:  # deleted while we looked
            pass
    return total


class PeakSampler(threading.Thread):
    def __init__(self, root: Path, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.peak = root, interval, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            if self.root.exists():
                self.peak = max(self.peak, tree_bytes(self.root))
            time.sleep(self.interval)


def run_mode(work: Path, keep: bool) -> dict:
    from pipelines.batch.config import ProcessingOptions, RunConfig
    from pipelines.batch.driver import run_pipeline

    out = work / ("out-kept" if keep else "out-deleted")
    sampler = PeakSampler(out / "windows")
    sampler.start()
    t0 = time.perf_counter()
    s = run_pipeline(RunConfig(manifest=str(work / "requests.jsonl"), out=str(out),
                               processing=ProcessingOptions(keep_windows=keep)))
    sampler.done.set()
    sampler.join()
    return {"mode": "keep-windows" if keep else "default (deleted)", "requests": s.counts, "windows": s.windows,
            "peak_intermediate_bytes": sampler.peak, "final_intermediate_bytes": tree_bytes(out / "windows"),
            "output_bytes": s.bytes_written, "wall_s": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--num-cpus", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="mf-bench-storage-"))
    demo_manifest(work, args.requests, args.frames, fps=12, steps=args.steps, size=args.size, window=16, overlap=4)
    start_ray(args.num_cpus)
    for keep in (True, False):
        print(json.dumps(run_mode(work, keep)), flush=True)


if __name__ == "__main__":
    main()
