"""Dataset specs, pairing, and `mf dataset run` on a real local Ray: idempotent re-runs, growing catalogs, /metrics."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from jobs.dataset import (
    DatasetRun,
    DatasetSpecError,
    Pairing,
    Scheduler,
    list_catalog,
    load_spec,
    pair,
    parse_spec,
    plan_run,
    run_dataset,
)
from pipelines.batch.metrics import PipelineMetrics, start_metrics_server
from pipelines.batch.requests import read_raw_rows
from pipelines.batch.results import read_results
from tests.infra.test_infra import dashboard_metric_names
from tests.jobs.media_helpers import TINY_EDIT, write_clip

REPO = Path(__file__).resolve().parents[2]


def _spec(tmp: Path, **over) -> Path:
    doc = {"name": "t", "sources": "sources/*.mp4", "motions": {"manifest": "motions.csv", "column": "uri"},
           "pairing": {"rule": "all"}, "edit": dict(TINY_EDIT), "output": "out", "schedule": "0 3 * * *",
           "run": {"preset": "tiny"}}
    doc.update(over)
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# ---------------------------------------------------------------------------------------------- no Ray needed

def test_spec_errors_name_file_and_field(tmp_path):
    cases = [({"pairing": {"rule": "some"}}, "pairing.rule"), ({"pairing": {"rule": "random"}}, "pairing.k"),
             ({"edit": {"steps": 0}}, "edit"), ({"edit": {"colour": 1}}, "unknown parameters"),
             ({"schedule": "every day"}, "schedule"), ({"output": None}, "'output' is required"),
             ({"bogus": 1}, "unknown fields"), ({"run": {"gpus": 2}}, "run"), ({"sources": 3}, "sources"),
             ({"run": {"pose_backend": "openpose"}}, "pose_backend must be one of"),
             ({"run": {"max_retries": -1}}, "max_retries must be >= 0"),
             ({"run": {"dtype": "fp8"}}, "dtype must be one of")]
    for over, needle in cases:
        p = _spec(tmp_path, **over)
        with pytest.raises(DatasetSpecError, match=re.escape(needle)) as ei:
            load_spec(str(p))
        assert str(p) in str(ei.value)
    with pytest.raises(DatasetSpecError, match="not found"):
        load_spec(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(DatasetSpecError, match="not valid YAML"):
        load_spec(str(tmp_path / "bad.yaml"))


def test_catalogs_glob_and_manifest(tmp_path):
    for n in ("b.mp4", "a.mp4", "c.txt"):
        (tmp_path / "sources").mkdir(exist_ok=True)
        (tmp_path / "sources" / n).write_bytes(b"x")
    (tmp_path / "motions.csv").write_text("uri\nm/x.mp4\n/abs/y.mp4\n")
    spec = load_spec(str(_spec(tmp_path)))
    assert list_catalog(spec.sources) == [str(tmp_path / "sources" / "a.mp4"), str(tmp_path / "sources" / "b.mp4")]
    assert list_catalog(spec.motions) == ["/abs/y.mp4", str(tmp_path / "m" / "x.mp4")]
    bad = load_spec(str(_spec(tmp_path, motions={"manifest": "motions.csv", "column": "path"})))
    with pytest.raises(DatasetSpecError, match="no column 'path'"):
        list_catalog(bad.motions, "motions")
    # memory:// globs keep their protocol
    import fsspec
    fs = fsspec.filesystem("memory")
    fs.pipe("/cat/v1.mp4", b"x")
    fs.pipe("/cat/v2.mp4", b"x")
    mem = parse_spec({"sources": "memory://cat/*.mp4", "motions": "memory://cat/v1.mp4", "output": "memory://o"})
    got = list_catalog(mem.sources)
    assert len(got) == 2 and all(g.startswith("memory://") for g in got)
    assert [g.rsplit("/", 1)[1] for g in got] == ["v1.mp4", "v2.mp4"]


def test_pairing_is_deterministic_and_stable_when_catalogs_grow():
    srcs = [f"s{i}" for i in range(20)]
    mots = [f"m{i}" for i in range(10)]
    assert len(pair(srcs, mots, Pairing("all"))) == 200
    rnd = Pairing("random", k=3, seed=7)
    a = pair(srcs, mots, rnd)
    assert len(a) == 60 and a == pair(list(reversed(srcs)), mots, rnd)
    assert all(sum(1 for s, _ in a if s == src) == 3 for src in srcs)
    assert a != pair(srcs, mots, Pairing("random", k=3, seed=8))
    # more sources: every existing source keeps exactly its pairs
    b = pair(srcs + ["s_new1", "s_new2"], mots, rnd)
    assert set(a) <= set(b) and len(set(b) - set(a)) == 6
    # one more motion: a source's picks change only where the new motion ranks into its top k
    c = pair(srcs, mots + ["m_new"], rnd)
    changed = {s for s, _ in set(a) ^ set(c)}
    assert all((str(s), "m_new") in c for s in changed)


def test_scheduler_runs_on_cron_ticks_and_stops():
    spec = parse_spec({"sources": "x/*.mp4", "motions": "y/*.mp4", "output": "/tmp/o", "schedule": "*/5 * * * *"})
    clock = [datetime(2026, 1, 1, 10, 1, tzinfo=timezone.utc)]
    calls: list[str] = []

    class FastScheduler(Scheduler):
        def loop(self):  # the real loop with a virtual clock that jumps to each fire time
            return super().loop()

    def fake_run(s, day, **kw):
        calls.append((clock[0].strftime("%H:%M"), day))
        return DatasetRun(date=day, partition="")

    sched = FastScheduler(spec, max_runs=3, run_fn=fake_run, now=lambda: clock[0])
    sched._stop.wait = lambda t: clock.__setitem__(0, clock[0] + timedelta(seconds=t))  # type: ignore[assignment]
    assert sched.loop() == 0
    assert calls == [("10:05", "2026-01-01"), ("10:10", "2026-01-01"), ("10:15", "2026-01-01")]

    def boom(s, day, **kw):
        raise RuntimeError("storage down")
    sched2 = Scheduler(spec, max_runs=2, run_fn=boom, now=lambda: clock[0])
    sched2._stop.wait = lambda t: clock.__setitem__(0, clock[0] + timedelta(seconds=t))  # type: ignore[assignment]
    assert sched2.loop() == 1 and len(sched2.runs) == 2  # failures are logged, the schedule goes on


def test_schedule_command_stops_cleanly_on_sigterm(tmp_path):
    (tmp_path / "motions.csv").write_text("uri\n")
    spec = _spec(tmp_path, schedule="0 0 1 1 *")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "dataset", "schedule", str(spec)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        line = ""
        while time.time() < deadline and "schedule" not in line:
            line = proc.stdout.readline()
        assert "schedule '0 0 1 1 *'" in line
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.time() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()


# ---------------------------------------------------------------------------------------------- real Ray

@pytest.fixture(scope="module")
def ray4():
    """A local Ray with 4 logical CPUs (plan task + prepare actor + edit actor + stitch task run at once)."""
    import ray

    if ray.is_initialized():  # a session cluster is up already: share it
        yield ray
        return
    tmp = tempfile.mkdtemp(prefix="mfds", dir="/tmp")
    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=512 * 1024 * 1024,
             _temp_dir=tmp, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.shared
@pytest.mark.slow
def test_dataset_runs_are_idempotent_and_add_exactly_new_pairs(tmp_path, fixture_cases, ray4, monkeypatch):
    src = tmp_path / "sources"
    write_clip(fixture_cases, "s1", src / "s1.mp4")
    write_clip(fixture_cases, "s2", src / "s2.mp4")
    write_clip(fixture_cases, "m1", tmp_path / "motions" / "m1.mp4")
    (tmp_path / "motions.csv").write_text("uri\nmotions/m1.mp4\n")
    spec = load_spec(str(_spec(tmp_path)))
    figures = {}

    # run 1: two pairs, with the metrics of the run served on /metrics
    metrics = PipelineMetrics()
    t0 = time.perf_counter()
    r1 = run_dataset(spec, "2026-05-01", metrics=metrics)
    figures["run1"] = (r1.new_pairs, r1.added, round(time.perf_counter() - t0, 1))
    assert (r1.pairs_total, r1.new_pairs, r1.added, r1.failed) == (2, 2, 2, 0), r1
    part = tmp_path / "out" / "run_date=2026-05-01"
    rows = read_results(str(part / "results.parquet"))
    assert sorted(r["status"] for r in rows) == ["succeeded", "succeeded"]
    _, reqs = read_raw_rows(str(part / "requests.parquet"))
    assert {r["request_id"] for r in reqs} == {r["request_id"] for r in rows} == set(r1.new_ids)
    for r in rows:
        assert Path(r["output_uri"]).is_file() and r["output_uri"].startswith(str(part / "videos"))
        assert r["frames"] == 8 and r["width"] == 256  # outputs are at the source resolution

    server = start_metrics_server(0, metrics, addr="127.0.0.1")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    exposed = {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln and not ln.startswith("#")}
    missing = dashboard_metric_names() - exposed
    assert not missing, f"/metrics lacks series the dashboard uses: {sorted(missing)}"
    assert re.search(r'^mf_requests_total\{status="succeeded"\} 2\.0$', text, re.M)
    assert re.search(r"^mf_frames_total 16\.0$", text, re.M)
    assert re.search(r'^mf_stage_seconds_count\{stage="edit"\} [1-9]', text, re.M)
    assert re.search(r"^mf_edit_seconds_count [1-9]", text, re.M)
    figures["metrics_series"] = len(exposed)

    # run 2, same date: nothing new, nothing written, no pipeline
    before = {p: p.stat().st_mtime_ns for p in part.rglob("*") if p.is_file()}
    import pipelines.batch.driver as rp
    monkeypatch.setattr(rp, "run_pipeline", lambda *a, **k: pytest.fail("a no-op run started the pipeline"))
    t0 = time.perf_counter()
    r2 = run_dataset(spec, "2026-05-01")
    figures["run2"] = (r2.new_pairs, r2.added, round(time.perf_counter() - t0, 2))
    assert (r2.pairs_total, r2.already_produced, r2.new_pairs, r2.ran_pipeline) == (2, 2, 0, False)
    assert {p: p.stat().st_mtime_ns for p in part.rglob("*") if p.is_file()} == before
    monkeypatch.undo()

    # run 3, a larger source catalog on the next day: exactly the new pair, in its own partition
    write_clip(fixture_cases, "s3", src / "s3.mp4")
    info, _ = plan_run(spec, "2026-05-02")
    assert (info.pairs_total, info.already_produced, info.new_pairs) == (3, 2, 1)
    t0 = time.perf_counter()
    r3 = run_dataset(spec, "2026-05-02")
    figures["run3"] = (r3.new_pairs, r3.added, round(time.perf_counter() - t0, 1))
    assert (r3.new_pairs, r3.added, r3.failed) == (1, 1, 0)
    rows3 = read_results(str(tmp_path / "out" / "run_date=2026-05-02" / "results.parquet"))
    assert [r["source"] for r in rows3] == [str(src / "s3.mp4")] and rows3[0]["status"] == "succeeded"
    assert not set(r3.new_ids) & set(r1.new_ids)
    # and once more: a no-op again
    assert run_dataset(spec, "2026-05-02").ran_pipeline is False
    print(f"\nFIGURES dataset (new pairs, added, seconds): {figures}")
