"""`mf submit --follow` against a real Ray head started with `ray start --head` (dashboard on 127.0.0.1)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from jobs.submit import EXIT_AUTH, EXIT_UNREACHABLE, SubmitRequest, classify
from pipelines.batch.requests import write_manifest
from pipelines.batch.results import read_results
from tests.jobs.media_helpers import TINY_EDIT, write_clip
from tests.jobs.net_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent



def _env(**extra) -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def _mf(*args: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, env=_env(**env), text=True,
                          capture_output=True, timeout=timeout)


def test_unreachable_cluster_is_a_clear_error():
    port = free_port()  # nothing listens there
    t0 = time.time()
    r = _mf("submit", "x.parquet", "--out", "/tmp/x", "--address", f"http://127.0.0.1:{port}", "--follow",
            timeout=60)
    assert r.returncode == EXIT_UNREACHABLE, r.stderr
    assert f"cannot reach the Ray cluster at http://127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr and time.time() - t0 < 30
    r = _mf("jobs", "status", "raysubmit_x", "--address", f"127.0.0.1:{port}", timeout=60)
    assert r.returncode == EXIT_UNREACHABLE and "cannot reach" in r.stderr
    r = _mf("submit", "x.parquet", "--out", "/tmp/x", timeout=60, RAY_ADDRESS="", MF_RAY_ADDRESS="")
    assert r.returncode == 2 and "no cluster address" in r.stderr


def test_refused_token_is_a_clear_error():
    from ray.exceptions import AuthenticationError

    err = classify(AuthenticationError("Authentication failed: Forbidden: Invalid authentication token"),
                   "http://head:8265")
    assert err.exit_code == EXIT_AUTH and "refused" in str(err) and "RAY_AUTH_MODE" in str(err)


def test_submit_forwards_every_retarget_option():
    """Every `mf retarget` option but the process-local ones, given to `mf submit`, reaches the job's `mf retarget`
    with the same value as if given to `mf retarget` directly."""
    import argparse

    from jobs.commands import retarget, submit

    parser = argparse.ArgumentParser(prog="mf")
    sub = parser.add_subparsers(dest="command")
    retarget.register(sub)
    submit.register(sub)
    options: list[str] = []
    dests: set[str] = set()
    for a in sub.choices["retarget"]._actions:
        if not a.option_strings or a.dest in ("help", "out", *retarget.LOCAL_ONLY):
            continue
        dests.add(a.dest)
        if isinstance(a, argparse._StoreTrueAction):
            options.append(a.option_strings[-1])
            continue
        if isinstance(a, argparse._AppendAction):
            options += [a.option_strings[-1], "node_a=1", a.option_strings[-1], "node_b=0.5"]
            continue
        value = (next(c for c in a.choices if c != a.default) if a.choices
                 else {int: "7", float: "0.5"}.get(a.type, "s3://models/mf"))
        options += [a.option_strings[-1], value]
    base = ["m.parquet", "--out", "s3://b/out"]
    direct = vars(parser.parse_args(["retarget", *base, *options]))
    forwarded = submit.forwarded_args(parser.parse_args(["submit", *base, "--address", "http://h:8265", *options]))
    via_submit = vars(parser.parse_args(["retarget", *base, *forwarded]))
    defaults = vars(parser.parse_args(["retarget", *base]))
    changed = {k for k in direct if direct[k] != defaults[k]}
    assert changed == dests  # every option was given a non-default value
    assert {"weights", "output_scale", "cpus_per_actor", "prepare_cpus", "no_progress"} <= dests
    assert via_submit == direct
    assert SubmitRequest("m.parquet", "s3://b/out", forwarded).entrypoint().endswith(" ".join(forwarded))


def test_runtime_env_carries_the_project():
    req = SubmitRequest("s3://b/req.parquet", "s3://b/out", ["--actors", "2"])
    rt = req.runtime_env()
    assert Path(rt["working_dir"]) == REPO and {".venv", ".git", "outputs"} <= set(rt["excludes"])
    assert req.entrypoint().startswith("python -m jobs.submit --which && python -m jobs.cli retarget "
                                       "s3://b/req.parquet --out s3://b/out")
    assert "--address auto" in req.entrypoint() and req.entrypoint().endswith("--actors 2")


def test_local_paths_are_made_absolute_or_refused(tmp_path):
    """The job runs in its own copy of the project: `req.csv` from the user's folder would be looked up there."""
    from jobs.submit import SubmitError, resolve_paths

    (tmp_path / "req.csv").write_text("source,driving\n")
    (tmp_path / "weights").mkdir()
    req = SubmitRequest("req.csv", "out", ["--model", "weights", "--actors", "2"])
    got = resolve_paths(req, "http://127.0.0.1:8265", cwd=str(tmp_path))
    assert (got.manifest, got.out) == (str(tmp_path / "req.csv"), str(tmp_path / "out"))
    assert got.retarget_args == ["--model", str(tmp_path / "weights"), "--actors", "2"]
    assert f"retarget {tmp_path / 'req.csv'} --out {tmp_path / 'out'}" in got.entrypoint()
    with pytest.raises(SubmitError, match="manifest nope.csv not found") as e:
        resolve_paths(SubmitRequest("nope.csv", "out"), "http://localhost:8265", cwd=str(tmp_path))
    assert e.value.exit_code == 2
    with pytest.raises(SubmitError, match="is another one: it cannot read or write it"):
        resolve_paths(SubmitRequest("req.csv", "s3://b/out"), "http://10.0.0.5:8265", cwd=str(tmp_path))
    with pytest.raises(SubmitError, match="--out out is a path on this machine"):
        resolve_paths(SubmitRequest("s3://b/req.csv", "out"), "http://head:8265", cwd=str(tmp_path))
    shared = resolve_paths(SubmitRequest("req.csv", "out", ["--shared-fs"]), "http://head:8265", cwd=str(tmp_path))
    assert shared.manifest == str(tmp_path / "req.csv")
    remote = SubmitRequest("s3://b/req.csv", "s3://b/out", ["--model", "s3://b/w"])
    assert resolve_paths(remote, "http://head:8265") == remote
    with pytest.raises(SubmitError, match="memory://"):
        resolve_paths(SubmitRequest("memory://m.csv", "s3://b/out"), "http://head:8265")


class _FreshHead:
    """A JobSubmissionClient of a head whose job agent is not up for the first ``fails`` submissions."""

    def __init__(self, fails: int):
        self.fails, self.calls = fails, 0

    def submit_job(self, **kwargs):
        self.calls += 1
        if self.calls <= self.fails:
            raise RuntimeError("Request failed with status code 500: No available agent to submit job, please try "
                               "again later..")
        return "raysubmit_ok"


def test_a_fresh_head_is_waited_for(monkeypatch):
    import jobs.submit as S

    monkeypatch.setattr(S.time, "sleep", lambda s: None)
    req = SubmitRequest("s3://b/req.csv", "s3://b/out")
    head = _FreshHead(fails=3)
    assert S.submit(head, "http://head:8265", req) == "raysubmit_ok" and head.calls == 4
    monkeypatch.setattr(S, "AGENT_WAIT_S", 0.0)  # bounded: past the wait, one clear line
    with pytest.raises(S.SubmitError, match="accepts no jobs yet") as e:
        S.submit(_FreshHead(fails=10**6), "http://head:8265", req)
    assert e.value.exit_code == EXIT_UNREACHABLE


def test_the_job_log_says_which_python_and_mf_ran(tmp_path):
    """The entrypoint's first command, in the project's venv and in a Python without mf's dependencies."""
    ok = subprocess.run([sys.executable, "-m", "jobs.submit", "--which"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert f"mf job: python {sys.executable}" in ok.stdout and f"mf code {REPO}" in ok.stdout
    assert "mf job: ray 2.60.0" in ok.stdout and "mf job: torch " in ok.stdout
    bare = Path("/usr/bin/python3")
    if not bare.exists():
        pytest.skip("no system python3 to stand for a node's Python without mf's dependencies")
    other = subprocess.run([str(bare), "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import runpy; "
                            "sys.argv = ['jobs.submit', '--which']; runpy.run_module('jobs.submit', "
                            "run_name='__main__')", str(REPO)], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert other.returncode == 1 and "lacks ray" in other.stderr and "start Ray from the project's venv" in other.stderr


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` from the venv, in its own process group, stopped by its id afterwards.

    (``ray stop`` would kill every Ray on this shared machine; terminating our own ``--block`` process stops
    exactly the cluster we started.)
    """
    gcs, dash = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="mfsub", dir="/tmp")
    t0 = time.time()
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dash),
         # every per-node port free too: another Ray on this machine (a test's local cluster) holds the defaults,
         # and a head whose job agent cannot bind its port never accepts a job ("No available agent")
         "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
         "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
         "--ray-client-server-port", str(free_port()), "--num-cpus", "4",
         "--object-store-memory", str(512 * 1024 * 1024),
         "--temp-dir", tmp, "--include-dashboard", "true", "--disable-usage-stats"],
        env=_env(), stdout=open(os.path.join(tmp, "ray-start.log"), "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray start failed: {Path(tmp, 'ray-start.log').read_text()[-2000:]}") from None
                time.sleep(1)
        print(f"\nFIGURES ray start --head: {time.time() - t0:.1f}s")
        yield address
    finally:
        t1 = time.time()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        print(f"FIGURES ray head stopped in {time.time() - t1:.1f}s")


@pytest.mark.shared
@pytest.mark.slow
def test_submit_follow_two_requests(tmp_path, fixture_cases, ray_head):
    src = write_clip(fixture_cases, "s1", tmp_path / "s1.mp4")
    src2 = write_clip(fixture_cases, "s2", tmp_path / "s2.mp4")
    drv = write_clip(fixture_cases, "m1", tmp_path / "m1.mp4")
    manifest = tmp_path / "requests.csv"
    write_manifest([{"source": str(src), "driving": str(drv), **TINY_EDIT},
                    {"source": str(src2), "driving": str(drv), **TINY_EDIT, "seed": 7}], str(manifest))
    out = tmp_path / "out"
    t0 = time.time()
    # paths relative to the folder `mf submit` runs in (the repo): made absolute before they reach the cluster
    r = _mf("submit", os.path.relpath(manifest, REPO), "--out", os.path.relpath(out, REPO), "--address", ray_head,
            "--follow", "--timeout", "400", timeout=450)
    wall = time.time() - t0
    print(f"FIGURES mf submit --follow (2 requests): {wall:.1f}s, rc={r.returncode}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "submitted job raysubmit_" in r.stdout and "SUCCEEDED (exit 0)" in r.stdout
    assert f"mf job: python {VENV_BIN / 'python'}" in r.stdout and "mf job: torch " in r.stdout  # which one ran
    job_id = r.stdout.split("submitted job ", 1)[1].split()[0]
    rows = read_results(str(out / "results.parquet"))
    assert [row["status"] for row in rows] == ["succeeded", "succeeded"], rows
    assert [row["manifest_row"] for row in rows] == [1, 2] and len({row["request_id"] for row in rows}) == 2
    for row in rows:
        assert Path(row["output_uri"]).is_file() and row["frames"] == 8 and row["width"] == 256  # source resolution

    st = _mf("jobs", "status", job_id, "--address", ray_head, timeout=60)
    assert st.returncode == 0 and "SUCCEEDED" in st.stdout
    lg = _mf("jobs", "logs", job_id, "--address", ray_head, timeout=60)
    assert lg.returncode == 0 and "retarget" in lg.stdout + lg.stderr
    sp = _mf("jobs", "stop", job_id, "--address", ray_head, timeout=60)
    assert sp.returncode == 0 and "already finished" in sp.stdout
    missing = _mf("jobs", "status", "raysubmit_nope", "--address", ray_head, timeout=60)
    assert missing.returncode == 1 and "raysubmit_nope" in missing.stderr
