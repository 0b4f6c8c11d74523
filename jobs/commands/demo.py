"""``mf demo``: the main job end to end on the embedded default.

Makes its own demo inputs (a portrait that ships with matplotlib, animated with camera movement, plus a waving pose
track), starts a local Ray, and runs them through the retargeting pipeline with the bundled ``tiny`` model — whose
output is untrained noise: it exercises every stage. ``--weights DIR`` points the same run at real weights.

Demo inputs (no downloads, nothing from outside the installed packages):

- Source: a portrait photograph that ships with matplotlib (Grace Hopper, ``grace_hopper.jpg``) animated with a
  slow zoom and pan (camera movement), encoded as H.264 with a sine-tone audio track.
- Driving motion: a pose track (Parquet, :mod:`pipelines.conditioning.poses.keypoints` schema) made from the source
  person's own skeleton on the first frame, with the head swaying and both arms raised and waving.
- A one-request manifest (JSONL) pointing at both, by paths relative to the manifest's folder.
"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
from dataclasses import dataclass

import numpy as np
from PIL import Image

from jobs.commands.retarget import RUN_DEFAULTS, run_manifest
from pipelines.batch.config import RunOptions
from pipelines.batch.status import FAILED

log = logging.getLogger("mf.demo")


@dataclass
class DemoInputs:
    source: str
    driving: str
    manifest: str
    frames: int
    fps: int


def portrait() -> np.ndarray:
    import matplotlib.cbook as cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return np.asarray(Image.open(path).convert("RGB"))


def source_frames(frames: int, size=(320, 256)) -> np.ndarray:
    """(frames, H, W, 3): a slow zoom-in with a sideways pan over the portrait."""
    img = portrait()
    ih, iw = img.shape[:2]
    h, w = size
    out = np.empty((frames, h, w, 3), np.uint8)
    for k in range(frames):
        u = k / max(frames - 1, 1)
        zoom = 1.0 + 0.15 * u
        ch, cw = ih / zoom, (ih / zoom) * w / h
        cw = min(cw, iw)
        cx = iw / 2 + (iw - cw) / 2 * 0.6 * math.sin(2 * math.pi * u)
        cy = ih / 2 + (ih - ch) / 2 * 0.3
        box = (cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2)
        out[k] = np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC, box=box))
    return out


def encode_with_tone(frames: np.ndarray, fps: int, path: str) -> None:
    n, h, w, _ = frames.shape
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", str(fps), "-i", "-", "-f", "lavfi", "-i", f"sine=frequency=440:duration={n / fps:.3f}",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", "-movflags", "+faststart", path]
    subprocess.run(cmd, input=frames.tobytes(), check=True)


def waving_track(first_frame: np.ndarray, frames: int, fps: int):
    """The source person's skeleton on frame 0, animated: head sway, both arms raised and waving."""
    from pipelines.conditioning import extract_poses
    from pipelines.conditioning.poses.keypoints import PoseTrack

    h, w = first_frame.shape[:2]
    ref = extract_poses(first_frame[None], fps=fps)
    base = ref.body[0].copy()
    if base[1, 2] <= 0 or base[2, 2] <= 0 or base[5, 2] <= 0:
        raise RuntimeError("demo: no upper body found in the demo portrait")
    shoulder = float(np.linalg.norm(base[2, :2] - base[5, :2]))
    body = np.repeat(base[None], frames, 0)
    for k in range(frames):
        ph = 2 * math.pi * k / max(frames / 2, 1)
        sway = 0.12 * shoulder * math.sin(ph)
        for j in (0, 14, 15, 16, 17):  # head
            body[k, j, 0] += sway
        for side, (s, e, wr) in enumerate(((2, 3, 4), (5, 6, 7))):
            sign = -1 if side == 0 else 1
            lift = 0.5 + 0.5 * math.sin(ph + side * math.pi)
            elbow = base[s, :2] + np.array([sign * 0.55 * shoulder, -0.15 * shoulder * lift])
            wrist = elbow + np.array([sign * 0.2 * shoulder * math.cos(ph), -0.6 * shoulder * (0.4 + lift)])
            body[k, e] = (*np.clip(elbow, 0, (w - 1, h - 1)), 1.0)
            body[k, wr] = (*np.clip(wrist, 0, (w - 1, h - 1)), 1.0)
    hands = np.zeros((frames, 2, 21, 3), np.float32)
    return PoseTrack(body, hands, np.zeros(frames, np.int32), (h, w), float(fps))


def make_demo_inputs(out_dir: str, frames: int = 40, fps: int = 12, size: int = 128, steps: int = 12,
                     window: int = 16, overlap: int = 4) -> DemoInputs:
    """Write the demo source video, driving pose track and a one-request manifest under ``out_dir``."""
    from pipelines.conditioning.poses.keypoints import write_pose_track

    os.makedirs(out_dir, exist_ok=True)
    src = os.path.join(out_dir, "demo_source.mp4")
    drv = os.path.join(out_dir, "demo_driving_poses.parquet")
    frames_arr = source_frames(frames)
    if not os.path.exists(src):
        encode_with_tone(frames_arr, fps, src + ".tmp.mp4")
        os.replace(src + ".tmp.mp4", src)
    if not os.path.exists(drv):
        write_pose_track(waving_track(frames_arr[0], frames, fps), drv)
    manifest = os.path.join(out_dir, "requests.jsonl")
    # paths relative to the manifest's folder (the manifest rule: relative paths resolve against it)
    row = {"request_id": "demo-waving", "source": os.path.basename(src), "driving": os.path.basename(drv),
           "steps": steps, "size": size,
           "window": window, "overlap": overlap, "seed": 42, "preview": True}
    with open(manifest + ".tmp", "w") as fh:
        fh.write(json.dumps(row) + "\n")
    os.replace(manifest + ".tmp", manifest)
    return DemoInputs(src, drv, manifest, frames, fps)


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the retargeting pipeline end to end on built-in demo inputs",
                       description=__doc__)
    p.add_argument("--out", default="mf_out/demo", help="output root (default: mf_out/demo)")
    p.add_argument("--weights", default=None,
                   help=f"official weights dir (or our format; local or fsspec URI); default: bundled "
                        f"{RUN_DEFAULTS.preset} model")
    p.add_argument("--frames", type=int, default=40, help="demo video length in frames")
    p.add_argument("--size", type=int, default=None, help="model resolution (default: 128 tiny, 512 with weights)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: 12 tiny, 50 with weights)")
    p.add_argument("--actors", type=int, default=RUN_DEFAULTS.actors)
    p.add_argument("--address", default=None, help="Ray address (default: a local Ray started here)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Make the demo inputs under ``<out>/inputs/`` and run their manifest as ``mf retarget`` would with
    ``--weights``, ``--actors`` and ``--address`` as given (every other run option at its default); print the
    outputs. Exit status: that of the run."""
    real = args.weights is not None
    out = os.path.abspath(args.out)  # printed paths work from any directory
    inputs_dir = os.path.join(out, "inputs")
    demo = make_demo_inputs(inputs_dir, frames=args.frames, size=args.size or (512 if real else 128),
                            steps=args.steps or (50 if real else 12), window=24 if real else 16,
                            overlap=8 if real else 4)
    log.info("inputs:   %s (source %s, driving pose track %s, manifest %s)", inputs_dir,
             os.path.basename(demo.source), os.path.basename(demo.driving), os.path.basename(demo.manifest))
    options = RunOptions(weights=args.weights, actors=args.actors)
    if not real:
        log.warning("bundled %s model with random weights: the edited video is untrained noise "
                    "(--weights DIR for real results)", options.preset)
    rc = run_manifest(demo.manifest, out, options, address=args.address)
    from pipelines.batch.results import read_results

    manifest = os.path.join(out, "results.parquet")
    for row in read_results(manifest):
        if row["status"] == FAILED:
            print(f"failed:   {row['request_id']}: {row['error']}")
            continue
        print(f"output:   {row['output_uri']} ({row['frames']} frames, {row['width']}x{row['height']}, "
              f"{row['fps_rational']} fps)")
        if row.get("preview_uri"):
            print(f"preview:  {row['preview_uri']} (source | target pose | edit)")
    print(f"manifest: {manifest}")
    return rc
