"""The pipeline on a Ray cluster of two nodes on this machine (its own process: the session's Ray stays apart):
edit actors pinned to one node and prepare actors to the other through custom resources, so nothing assumes one
node; a local-path --out is refused there unless declared shared."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipelines.batch.requests import write_manifest
from pipelines.batch.results import read_results
from tests.jobs.media_helpers import TINY_EDIT, write_clip

REPO = Path(__file__).resolve().parents[3]


def test_two_node_cluster_pins_stages_by_custom_resources(fixture_cases, tmp_path):
    from jobs.commands.demo import waving_track
    from pipelines.conditioning.poses.keypoints import write_pose_track
    from pipelines.media.video import read_frames

    clip = write_clip(fixture_cases, "s1", tmp_path / "in" / "person.mp4", frames=8, side=96)
    first = read_frames(str(clip), [0])[0]
    write_pose_track(waving_track(np.ascontiguousarray(first), 8, 8), str(tmp_path / "in" / "wave.parquet"))
    write_manifest([{"request_id": f"r{k}", "source": "person.mp4", "driving": "wave.parquet", "seed": k,
                     **TINY_EDIT, "size": 96} for k in range(2)], str(tmp_path / "in" / "requests.jsonl"))
    out = tmp_path / "out"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run([sys.executable, str(REPO / "tests" / "pipelines" / "batch" / "multinode_job.py"),
                          str(tmp_path / "in" / "requests.jsonl"), str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["nodes"] == 2
    (edit_node,), (prepare_node,) = got["by_resource"]["edit_node"], got["by_resource"]["prepare_node"]
    assert edit_node != prepare_node and edit_node == got["worker"]
    assert "2 nodes" in got["refused"] and "--shared-fs" in got["refused"]
    assert got["counts"] == {"succeeded": 2}
    assert got["ran_on"] == {"edit": [edit_node], "prepare": [prepare_node]}
    rows = read_results(str(out / "results.parquet"))
    assert [r["frames"] for r in rows] == [8, 8]
