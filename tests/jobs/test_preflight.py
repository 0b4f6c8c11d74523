"""The run pre-flight (:mod:`jobs.preflight`) on the session's local Ray, against a real local S3 server (moto's
standalone server, as in tests/jobs/test_s3.py) and local paths: a Ray task with the edit stage's resources reads
the manifest and a sample of its inputs and writes a probe under ``--out``; a problem fails the run at once, naming
the URI and the error, before any window.

The session Ray's workers were started before the S3 server, so they get its endpoint and credentials through the
tasks' runtime env (a real run's workers have them from their node: environment, profile, instance role)."""
from __future__ import annotations

import dataclasses
import time

import pytest

from jobs.preflight import PreflightError, preflight, sample_inputs
from pipelines.batch.config import ClusterShape, RunConfig, RunOptions
from pipelines.batch.requests import write_manifest
from tests.jobs.test_s3 import s3, s3_env  # noqa: F401 - the S3 server fixtures

pytestmark = [pytest.mark.shared]

BUCKET = "mf-preflight"
PARAMS = {"steps": 2, "size": 96, "window": 8, "overlap": 4}


@pytest.fixture(scope="module")
def bucket(s3):  # noqa: F811
    s3.call_s3("create_bucket", Bucket=BUCKET)  # s3fs.mkdir sends a LocationConstraint moto refuses
    for name in ("a.mp4", "b.mp4", "m.parquet"):
        s3.pipe(f"{BUCKET}/in/{name}", b"not really a video")
    return f"s3://{BUCKET}"


@pytest.fixture
def driver_s3(s3_env, monkeypatch):  # noqa: F811
    """The driver (this process) reaches the server too: it samples the manifest."""
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    return s3_env


def _s3_cfg(s3, rows, out):  # noqa: F811
    """A run config for a manifest of ``rows`` written to the bucket (its sources relative to it)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{**r, **PARAMS} for r in rows]), buf)
    s3.pipe(f"{BUCKET}/in/requests.parquet", buf.getvalue())
    return RunConfig.build(RunOptions(), manifest=f"s3://{BUCKET}/in/requests.parquet", out=out)


def test_good_storage_passes_from_a_worker_and_leaves_no_probe(ray_local, driver_s3, s3, bucket):  # noqa: F811
    cfg = _s3_cfg(s3, [{"source": "a.mp4", "driving": "m.parquet"}, {"source": "b.mp4", "driving": "m.parquet"}],
                  f"{bucket}/out")
    got = preflight(cfg, ClusterShape.static(1, 2), runtime_env={"env_vars": driver_s3})
    assert got["read"] == [cfg.manifest, f"{bucket}/in/a.mp4", f"{bucket}/in/m.parquet", f"{bucket}/in/b.mp4"]
    assert got["write"] == [f"{bucket}/out"] and set(got["nodes"]) == {"edit"}
    assert not [p for p in s3.find(f"{BUCKET}/out") if ".mf-write-check" in p]  # the probe was removed


def test_a_missing_input_is_its_rows_matter_not_the_preflights(ray_local, driver_s3, s3, bucket):  # noqa: F811
    """One bad request fails its own row, never the job: a missing input passes the pre-flight (the run fails
    that row with the reason); a missing manifest does not."""
    cfg = _s3_cfg(s3, [{"source": "a.mp4", "driving": "m.parquet"}, {"source": "gone.mp4", "driving": "m.parquet"}],
                  f"{bucket}/out")
    preflight(cfg, ClusterShape.static(1, 2), runtime_env={"env_vars": driver_s3})
    gone = dataclasses.replace(cfg, manifest=f"s3://{BUCKET}/in/gone.parquet")
    with pytest.raises(PreflightError) as err:
        preflight(gone, ClusterShape.static(1, 2), runtime_env={"env_vars": driver_s3})
    (problem,) = err.value.problems
    assert f"{gone.manifest}: the driver cannot read the manifest: FileNotFoundError" in problem


def test_an_unwritable_out_fails_naming_it(ray_local, tmp_path):
    """An --out the worker cannot write (here a folder under a regular file: root writes anywhere else; moto lets
    any key write and creates a missing bucket, as s3fs asks it to, so S3 write denial is not shown here)."""
    (tmp_path / "file").write_text("a file, not a folder")
    out = tmp_path / "file" / "out"
    cfg = RunConfig.build(RunOptions(), manifest=str(_local_run(tmp_path)), out=str(out))
    with pytest.raises(PreflightError) as err:
        preflight(cfg, ClusterShape.static(1, 2))
    (problem,) = err.value.problems
    assert f"{out}: cannot write a file under it: " in problem
    assert not any(p.name.startswith(".mf-write-check") for p in tmp_path.rglob("*"))


def test_a_worker_without_credentials_is_told_where_they_come_from(ray_local, driver_s3, s3, bucket):  # noqa: F811
    """The session Ray's workers have no AWS settings at all: the credential chain is the problem, with the hint."""
    cfg = _s3_cfg(s3, [{"source": "a.mp4", "driving": "m.parquet"}], f"{bucket}/out")
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.raises(PreflightError, match="no AWS credentials found .*secret mf-s3"):
        preflight(cfg, ClusterShape.static(1, 2), runtime_env={"env_vars": env})


def test_the_sample_is_bounded_distinct_and_resolved(tmp_path):
    rows = [{"source": f"s{i % 5}.mp4", "driving": "d.parquet", **PARAMS} for i in range(40)]
    rows.insert(0, {"source": "", "driving": "d.parquet", **PARAMS})  # an invalid row reads nothing
    for ext in ("csv", "jsonl", "parquet"):
        write_manifest(rows, str(tmp_path / f"m.{ext}"))
        got = sample_inputs(str(tmp_path / f"m.{ext}"), limit=4)
        assert got == [str(tmp_path / n) for n in ("s0.mp4", "d.parquet", "s1.mp4", "s2.mp4")], ext
    with pytest.raises(PreflightError, match="the driver cannot read the manifest: FileNotFoundError"):
        sample_inputs(str(tmp_path / "missing.csv"))


def _local_run(tmp_path, source: str = "a.mp4"):
    (tmp_path / "in").mkdir(exist_ok=True)
    for name in ("a.mp4", "m.parquet"):
        (tmp_path / "in" / name).write_bytes(b"x")
    manifest = tmp_path / "in" / "requests.csv"
    write_manifest([{"source": source, "driving": "m.parquet", **PARAMS}], str(manifest))
    return manifest


def test_locally_it_is_cheap(ray_local, tmp_path):
    """A local Ray (the demo's case): one short task, well under the 2 s budget."""
    manifest = _local_run(tmp_path)
    cfg = RunConfig.build(RunOptions(), manifest=str(manifest), out=str(tmp_path / "out"))
    preflight(cfg, ClusterShape.static(1, 2))  # warm: the first task of a fresh worker pays its imports
    t0 = time.perf_counter()
    got = preflight(cfg, ClusterShape.static(1, 2))
    assert time.perf_counter() - t0 < 2.0 and got["seconds"] < 2.0
    assert got["read"] == [str(manifest), str(tmp_path / "in" / "a.mp4"), str(tmp_path / "in" / "m.parquet")]


def test_a_stage_no_node_can_hold_fails_after_the_wait(ray_local, tmp_path):
    cfg = RunConfig.build(RunOptions(edit_resources=(("mf_no_such_node", 1.0),)), manifest=str(_local_run(tmp_path)),
                          out=str(tmp_path / "out"))
    with pytest.raises(PreflightError, match=r"no worker took the edit stage's storage check \(CPU .*"
                                             r"mf_no_such_node 1\) within 2 s"):
        preflight(cfg, ClusterShape.static(1, 2), schedule_timeout_s=2)


def test_mf_retarget_stops_before_any_window(ray_local, tmp_path, capfd):
    """`mf retarget` (in-process, on the session Ray): an out under a file ends the run with exit status 2 and the
    message, and nothing is run."""
    from jobs.cli import main

    (tmp_path / "file").write_text("a file, not a folder")
    blocked = tmp_path / "file" / "out"
    assert main(["retarget", str(_local_run(tmp_path)), "--out", str(blocked), "--no-progress"]) == 2
    err = capfd.readouterr().err
    assert f"{blocked}: cannot write a file under it: " in err and "pre-flight failed, nothing was run" in err
