"""Seam metric with crossfade on and off, on a synthetic video whose windows are edited independently.

A smoothly moving scene is split into overlapping windows; each window gets its own perturbation —
a brightness/colour offset, a fixed noise texture and a sub-pixel shift, as independent window edits would differ —
and the windows are stitched with a crossfade and with a hard cut. ``seam_score``
(pipelines.windows.stitch) ≈ 1 means the
boundaries move no more than the content inside windows.

    python benchmarks/seams.py [--frames 240] [--size 128] [--window 24] [--overlap 8] [--strength 12]

``--pipeline-out DIR`` measures real pipeline output instead: for every finished request of ``DIR/results.parquet``
its edited windows (``DIR/windows/<request_id>/<window_id>.npz``) are re-stitched with the crossfade and with the
hard cut, at model scale, and scored the same way.

    python benchmarks/seams.py --pipeline-out mf_out/demo
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.windows.planning import plan_windows  # noqa: E402
from pipelines.windows.stitch import iter_stitched, seam_score  # noqa: E402

log = logging.getLogger("benchmarks.seams")


def synthetic_video(n: int, size: int) -> np.ndarray:
    """A textured background drifting right and a bright disc moving on a circle."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):
        bg = 110 + 50 * np.sin((x - 0.8 * t) / 9.0) * np.cos(y / 13.0)
        cx = size / 2 + size / 4 * np.cos(t / 25.0)
        cy = size / 2 + size / 4 * np.sin(t / 25.0)
        disc = np.clip(size / 8 - np.hypot(x - cx, y - cy), 0, 1)
        frame = bg[..., None] * np.array([1.0, 0.9, 0.8]) * (1 - disc[..., None]) + \
            disc[..., None] * np.array([230.0, 180.0, 90.0])
        out[t] = np.clip(frame, 0, 255).round().astype(np.uint8)
    return out


def perturbed_reader(video: np.ndarray, strength: float, seed: int):
    size = video.shape[1]

    def read(win):
        rng = np.random.default_rng([seed, win.index])
        offset = rng.normal(0, strength, size=3).astype(np.float32)
        texture = rng.normal(0, strength / 3, size=(size, size, 1)).astype(np.float32)
        shift = int(rng.integers(-1, 2))
        frames = np.roll(video[win.start:win.end].astype(np.float32), shift, axis=2)
        return np.clip(frames + offset + texture, 0, 255).round().astype(np.uint8)

    return read


def pipeline_output_seams(out: str) -> int:
    """Seam scores of a pipeline run's requests, crossfade on and off."""
    import json

    from pipelines.batch.results import read_results
    from pipelines.media import storage
    from pipelines.windows.planning import window_id

    rows = [r for r in read_results(storage.join(out, "results.parquet")) if r["status"] in ("succeeded", "skipped")]
    if not rows:
        print(f"seams: no finished request in {out}")
        return 1
    for r in rows:
        params = json.loads(r["params_json"])
        params.pop("preview", None)
        wins = plan_windows(int(r["frames"]), int(params["window"]), int(params["overlap"]))
        uris = [storage.join(out, "windows", r["request_id"],
                             f"{window_id(r['request_id'], r['source'], w, params)}.npz")
                for w in wins]
        missing = [u for u in uris if not storage.exists(u)]
        if missing:
            print(f"seams: {r['request_id']}: {len(missing)} window files missing (e.g. {missing[0]})")
            continue

        def read(w, uris=uris):
            return storage.read_npz(uris[w.index])["frames"]

        scores = {}
        for label, crossfade in (("hard cut", False), ("crossfade", True)):
            frames = np.stack([f for _, f in iter_stitched(wins, read, crossfade=crossfade)])
            scores[label] = seam_score(frames, wins)
        fmt = {k: ("n/a" if v is None else f"{v:.3f}") for k, v in scores.items()}
        print(f"seams {r['request_id']}: {r['frames']} frames, {len(wins)} windows of {params['window']} "
              f"(overlap {params['overlap']}): seam_score crossfade {fmt['crossfade']}, hard cut {fmt['hard cut']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--window", type=int, default=24)
    ap.add_argument("--overlap", type=int, default=8)
    ap.add_argument("--strength", type=float, default=12.0, help="std of the per-window colour offset (0..255)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pipeline-out", default=None, help="a pipeline output root: score its edited windows")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.pipeline_out:
        return pipeline_output_seams(args.pipeline_out)

    video = synthetic_video(args.frames, args.size)
    wins = plan_windows(args.frames, args.window, args.overlap)
    read = perturbed_reader(video, args.strength, args.seed)
    figures = {"reference (no window edits)": seam_score(video, wins)}
    identity = np.stack([f for _, f in iter_stitched(wins, lambda w: video[w.start:w.end])])
    assert np.array_equal(identity, video), "stitching consistent windows must be lossless"
    for label, crossfade in (("hard cut at overlap midpoint", False), ("crossfade (ramp over overlap)", True)):
        frames = np.stack([f for _, f in iter_stitched(wins, read, crossfade=crossfade)])
        assert frames.shape[0] == args.frames
        figures[label] = seam_score(frames, wins)
    print(f"seams: {args.frames} frames {args.size}x{args.size}, {len(wins)} windows of {args.window} "
          f"(overlap {args.overlap}), per-window offset std {args.strength}")
    for label, score in figures.items():
        print(f"  seam_score {label:32s} {score:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
