"""Per-call CPU time of the sampler's phases, this tree against another checkout, alternating in one run.

    git worktree add /tmp/mf-before 5436fe6^        # the code before the cost work, for example
    python benchmarks/model_calls_ab.py --other /tmp/mf-before --rounds 2

Each arm is a fresh process (sd15 sizes, random weights, fp32, one thread by default) that builds the model, then
edits one synthetic window with ``steps=2``: two reconstruction forwards, a CFG editing forward and a guidance call at
the guided step 0, and a plain CFG editing forward at step 1 (no guidance; ``--steps 1`` leaves it out). The first
call of each kind also pays first-call costs (allocations, kernel set-up: 5-6 s for a CFG forward on one thread);
``--steps 4`` times step 1 (guided) and step 3 (plain) instead, each after a step of its own kind. Where the
guidance takes its edit features from the CFG forward, the guided step's CFG forward records them (with their graph)
and costs more than a plain one: compare the sum of the two calls at a guided step as well as each call.
Arms run in the order other, this, this+checkpointing, other, ... so that drift of the machine hits all of them alike.
Prints per arm and round: build time, resident RSS after the build, the three call times and the peak RSS, then the
medians per arm. Figures depend on the machine and on what else runs on it; nothing here is tuned on any data.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
THIS_TREE = os.path.dirname(HERE)
COLUMNS = ("reconstruction_forward", "edit_forward", "edit_forward_plain", "guidance", "guided_step")


def inner(args) -> int:
    """One arm, in its own process: the model code comes from ``args.tree``."""
    sys.path.insert(0, args.tree)
    import torch

    torch.set_num_threads(args.threads)
    import mf_model
    from mf_model import EditOptions, load_model

    # model_window puts this tree on sys.path when imported: mf_model must already come from args.tree
    assert os.path.realpath(mf_model.__file__).startswith(os.path.realpath(args.tree) + os.sep), mf_model.__file__
    sys.path.insert(1, HERE)
    from model_window import peak_rss_gib, rss_gib, synthetic_window

    t0 = time.perf_counter()
    model = load_model(preset_name=args.preset, dtype="fp32", device="cpu")
    build_s = time.perf_counter() - t0
    resident = rss_gib()
    opts = {"steps": args.steps, "guidance_scale": 3.5, "seed": 0, "camera": False}
    if args.checkpointing is not None:
        opts["guidance_checkpointing"] = args.checkpointing == "on"
    res = model.edit(synthetic_window(args.frames, args.size, args.size), EditOptions(**opts))
    row = {"build_s": build_s, "resident_gib": resident,
           "peak_gib": peak_rss_gib()}
    row.update(step_times(res.info["timings"], args.steps))
    row["code"] = os.path.dirname(os.path.dirname(os.path.realpath(mf_model.__file__)))
    print("ROW " + json.dumps(row), flush=True)
    return 0


def step_times(timings: dict, steps: int) -> dict:
    """Call times of the last guided step and of the last step without guidance (nan where there is none). The
    plans of these step counts run one CFG forward per step (no replays): call k of a phase is step k's, and
    guidance call k the k-th guided step's."""
    from mf_model.schedule import StepPlan

    plan = StepPlan(steps)
    guided = [i for i in range(steps) if plan.guidance(i)]
    plain = [i for i in range(steps) if not plan.guidance(i)]
    g = guided[-1]
    row = {"reconstruction_forward": float(timings["reconstruction_forward"][g]),
           "edit_forward": float(timings["edit_forward"][g]),
           "guidance": float(timings["guidance"][len(guided) - 1]),
           "edit_forward_plain": float(timings["edit_forward"][plain[-1]]) if plain else float("nan")}
    row["guided_step"] = row["edit_forward"] + row["guidance"]
    return row


def run_arm(args, tree: str, checkpointing: str | None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--inner", "--tree", tree, "--preset", args.preset,
           "--frames", str(args.frames), "--size", str(args.size), "--threads", str(args.threads),
           "--steps", str(args.steps)]
    if checkpointing:
        cmd += ["--checkpointing", checkpointing]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    rows = [line[4:] for line in out.stdout.splitlines() if line.startswith("ROW ")]
    if out.returncode != 0 or not rows:
        raise SystemExit(f"arm {tree} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(rows[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", help="another checkout of this repository (the 'before' code)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--preset", default="sd15", choices=["tiny", "sd15"])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, choices=[1, 2, 4],
                    help="2 (default): guided step 0 and plain step 1; 4: steps 1 and 3, each after a step of the "
                         "same kind (no first-call costs); 1: the guided step alone")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tree", default=THIS_TREE, help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", choices=["on", "off"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inner:
        return inner(args)
    arms = ([("before", args.other, None)] if args.other else []) + [
        ("this", THIS_TREE, "off"), ("this+checkpointing", THIS_TREE, "on")]
    print(f"config: preset={args.preset} frames={args.frames} size={args.size}² fp32 cpu threads={args.threads} "
          f"steps={args.steps} (timed: the last guided step; edit_forward_plain: the last step without guidance); "
          f"arms: {', '.join(a[0] for a in arms)}", flush=True)
    results: dict[str, list[dict]] = {a[0]: [] for a in arms}
    cols = ("build_s", "resident_gib", *COLUMNS, "peak_gib")
    print("round arm                   " + " ".join(f"{c:>22}" for c in cols), flush=True)
    for r in range(args.rounds):
        for name, tree, ckpt in arms:
            row = run_arm(args, tree, ckpt)
            results[name].append(row)
            print(f"{r:>5} {name:<21} " + " ".join(f"{row[c]:>22.2f}" for c in cols) + f"   ({row['code']})",
                  flush=True)
    print("median per arm")
    for name, rows in results.items():
        print(f"  {name:<21} " + " ".join(f"{c}={statistics.median(x[c] for x in rows):.2f}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
