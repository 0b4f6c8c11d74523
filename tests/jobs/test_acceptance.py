"""Acceptance: each `mf` command run as a subprocess the way README.md and docs/ show it — from a working directory of
the user's, with relative paths, a second run, the exit codes — asserting on the files and manifests a user looks at.
(`mf demo` is covered by tests/jobs/test_console.py and `.ci/run`; `mf submit` by tests/jobs/test_submit.py.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.batch.requests import write_manifest
from pipelines.batch.results import read_results
from tests.jobs.media_helpers import TINY_EDIT, write_clip
from tests.jobs.net_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
EDIT = {**TINY_EDIT, "size": 96}
FRAMES = 8


def _env(**extra) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(REPO), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def mf(cwd: Path, *args: str, timeout: float = 400, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, env=_env(**env), text=True,
                          capture_output=True, timeout=timeout)


def _frames(video: str) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", video], capture_output=True, text=True)
    return int(out.stdout.strip())


@pytest.fixture(scope="module")
def user_dir(fixture_cases, tmp_path_factory):
    """A user's working directory: inputs/ with a person clip, a waving pose track and a CSV manifest whose paths
    are relative to it (one row names a file that does not exist)."""
    from jobs.commands.demo import waving_track
    from pipelines.conditioning.poses.keypoints import write_pose_track
    from pipelines.media.video import read_frames

    home = tmp_path_factory.mktemp("user")
    clip = write_clip(fixture_cases, "s1", home / "inputs" / "person.mp4", frames=FRAMES, side=128)
    first = np.ascontiguousarray(read_frames(str(clip), [0])[0])
    write_pose_track(waving_track(first, FRAMES, 8), str(home / "inputs" / "wave.parquet"))
    write_manifest([{"request_id": "good", "source": "person.mp4", "driving": "wave.parquet", **EDIT},
                    {"request_id": "missing", "source": "nowhere.mp4", "driving": "wave.parquet", **EDIT}],
                   str(home / "inputs" / "requests.csv"))
    return home


def test_retarget_relative_paths_rerun_and_other_weights(user_dir):
    argv = ["retarget", "inputs/requests.csv", "--out", "out", "--no-progress", "--num-cpus", "2"]
    first = mf(user_dir, *argv)
    assert first.returncode == 2, first.stderr[-3000:]  # one request failed: exit 2, the other still made
    rows = {r["request_id"]: r for r in read_results(str(user_dir / "out" / "results.parquet"))}
    video = user_dir / "out" / "videos" / "good.mp4"
    assert rows["good"]["status"] == "succeeded" and rows["good"]["output_uri"] == str(video)
    assert _frames(str(video)) == FRAMES and rows["good"]["bytes_written"] >= video.stat().st_size
    assert rows["missing"]["status"] == "failed" and "nowhere.mp4" in rows["missing"]["error"]
    assert str(user_dir / "inputs" / "nowhere.mp4") in rows["missing"]["error"]  # resolved next to the manifest
    assert not (user_dir / "out" / "windows").exists() or not any((user_dir / "out" / "windows").rglob("*.npz"))
    assert "retarget: requests failed 1, succeeded 1" in first.stdout
    mtime = video.stat().st_mtime_ns

    again = mf(user_dir, *argv)
    assert again.returncode == 2
    rows = {r["request_id"]: r for r in read_results(str(user_dir / "out" / "results.parquet"))}
    assert rows["good"]["status"] == "skipped" and video.stat().st_mtime_ns == mtime

    saved = mf(user_dir, "weights", "save-preset", "tiny", "weights", "--seed", "1")
    assert saved.returncode == 0, saved.stderr[-2000:]
    other = mf(user_dir, *argv, "--model", "weights")
    assert other.returncode == 2, other.stderr[-3000:]
    rows = {r["request_id"]: r for r in read_results(str(user_dir / "out" / "results.parquet"))}
    assert rows["good"]["status"] == "succeeded" and video.stat().st_mtime_ns != mtime  # other weights: recomputed
    assert rows["good"]["weights_id"].endswith(":tiny:seed1")  # the saved seed-1 weights, not the default seed 0


def test_weights_check(user_dir):
    ok = mf(user_dir, "weights", "check", "weights", timeout=120)
    if ok.returncode != 0 and not (user_dir / "weights").exists():  # the retarget test makes it; alone, make it
        assert mf(user_dir, "weights", "save-preset", "tiny", "weights").returncode == 0
        ok = mf(user_dir, "weights", "check", "weights", timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr[-2000:]
    assert "identity:" in ok.stdout
    bad = mf(user_dir, "weights", "check", "no-such-weights", timeout=120)
    assert bad.returncode == 1 and "no-such-weights" in bad.stdout + bad.stderr


def test_prepare_writes_the_official_layout(user_dir):
    from pipelines.conditioning import LAYOUT

    run = mf(user_dir, "prepare", "--source", "inputs/person.mp4", "--driving", "inputs/wave.parquet",
             "--out", "prepared", "--size", "96")
    assert run.returncode == 0, run.stderr[-3000:]
    for folder in LAYOUT:
        if folder == "target_images":  # only for a driving video
            continue
        assert len(list((user_dir / "prepared" / folder).iterdir())) == FRAMES, folder
    assert (user_dir / "prepared" / "keypoints.parquet").exists()
    bad = mf(user_dir, "prepare", "--source", "inputs/nowhere.mp4", "--driving", "inputs/wave.parquet",
             "--out", "prepared-bad")
    assert bad.returncode == 2 and "inputs/nowhere.mp4" in bad.stderr


def test_dataset_run_twice(user_dir):
    (user_dir / "motions").mkdir(exist_ok=True)
    (user_dir / "motions" / "wave.parquet").write_bytes((user_dir / "inputs" / "wave.parquet").read_bytes())
    spec = {"name": "accept", "sources": "inputs/person.mp4", "motions": "motions/*.parquet",
            "pairing": {"rule": "all"}, "edit": EDIT, "output": "dataset", "run": {"preset": "tiny"}}
    (user_dir / "spec.yaml").write_text(yaml.safe_dump(spec))
    first = mf(user_dir, "dataset", "run", "spec.yaml", "--date", "2026-01-02", "--num-cpus", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = read_results(str(user_dir / "dataset" / "run_date=2026-01-02" / "results.parquet"))
    assert [r["status"] for r in rows] == ["succeeded"] and _frames(rows[0]["output_uri"]) == FRAMES
    again = mf(user_dir, "dataset", "run", "spec.yaml", "--date", "2026-01-02")
    assert again.returncode == 0 and "nothing to do" in again.stdout



def test_serve_starts_answers_and_stops(user_dir):
    port = free_port()
    log = open(user_dir / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "serve", "--port", str(port), "--root", "served"],
                            cwd=user_dir, env=_env(MF_SERVE_TOKENS="accept-token"), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, health = time.monotonic() + 180, None
        while time.monotonic() < deadline and health is None:
            assert proc.poll() is None, (user_dir / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    health = json.loads(resp.read())
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        assert health and health["ok"] is True, (user_dir / "serve.log").read_text()[-3000:]
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/edits/x", timeout=5)
        assert ei.value.code == 401
    finally:
        proc.send_signal(signal.SIGTERM)  # what a process manager sends the main process
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            rc = None
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its process group
        except ProcessLookupError:
            pass
        proc.wait()
    assert rc == 0, (user_dir / "serve.log").read_text()[-3000:]
