"""``mf demo``: the main job end to end on the embedded default.

Makes its own demo inputs (a portrait that ships with matplotlib, animated with camera movement, plus a waving pose
track), starts a local Ray, and runs them through the retargeting pipeline with the bundled ``tiny`` model — whose
output is untrained noise: it exercises every stage. ``--weights DIR`` points the same run at real weights.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("mf.demo")


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the retargeting pipeline end to end on built-in demo inputs",
                       description=__doc__)
    p.add_argument("--out", default="mf_out/demo", help="output root (default: mf_out/demo)")
    p.add_argument("--weights", default=None,
                   help="official weights dir (or our format; local or fsspec URI); default: bundled tiny model")
    p.add_argument("--frames", type=int, default=40, help="demo video length in frames")
    p.add_argument("--size", type=int, default=None, help="model resolution (default: 128 tiny, 512 with weights)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: 12 tiny, 50 with weights)")
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--address", default=None, help="Ray address (default: a local Ray started here)")
    p.set_defaults(func=run)


def run(args) -> int:
    from jobs.cli import build_parser
    from jobs.commands import retarget
    from pipelines.demo import make_demo_inputs

    real = args.weights is not None
    inputs_dir = os.path.join(args.out, "inputs")
    demo = make_demo_inputs(inputs_dir, frames=args.frames, size=args.size or (512 if real else 128),
                            steps=args.steps or (50 if real else 12), window=24 if real else 16,
                            overlap=8 if real else 4)
    log.warning("demo inputs: source %s, driving pose track %s, manifest %s", demo.source, demo.driving,
                demo.manifest)
    if not real:
        log.warning("model: bundled tiny preset with random weights — the edited video is untrained noise; "
                    "use --weights DIR for real results")
    argv = ["retarget", demo.manifest, "--out", args.out, "--actors", str(args.actors)]
    if real:
        argv += ["--weights", args.weights]
    if args.address:
        argv += ["--address", args.address]
    rc = retarget.run(build_parser().parse_args(argv))
    from pipelines.manifest import read_results

    manifest = os.path.join(args.out, "results.parquet")
    for row in read_results(manifest):
        if row["status"] == "failed":
            print(f"failed:   {row['request_id']}: {row['error']}")
            continue
        print(f"output:   {row['output_uri']} ({row['frames']} frames, {row['width']}x{row['height']}, "
              f"{row['fps_rational']} fps)")
        if row.get("preview_uri"):
            print(f"preview:  {row['preview_uri']} (source | target pose | edit)")
    print(f"manifest: {manifest}")
    return rc
