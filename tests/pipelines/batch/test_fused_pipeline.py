"""The fused long-video mode (issue 31) through the batch pipeline: the ``fusion`` column, one task per fusion group
(plan → prepare → edit → finish in-process with the real tiny model at 64 px and 2 steps, and the fake conditioner
of ``test_stages``), the ids and the resume unit, the one-window identity with crossfade mode, the result row, the
in-process Serve path with cancel; then one real-Ray run of a fused and a crossfade request side by side."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from pipelines.batch.cancel import Cancelled
from pipelines.batch.config import ProcessingOptions, RunConfig
from pipelines.batch.finish import finish_request
from pipelines.batch.requests import parse_row, read_manifest, write_manifest
from pipelines.batch.single import edit_request
from pipelines.batch.stages import edit_task, plan_request, prepare_task
from pipelines.batch.status import PENDING, SKIPPED, SUCCEEDED
from pipelines.batch.tasks import TASK_SCHEMA, tasks_from_table, tasks_to_table
from pipelines.media import storage
from pipelines.media.encode import probe_output
from tests.pipelines.batch.test_ray_pipeline import FRAMES, PARAMS, inputs  # noqa: F401 - the module's fixture
from tests.pipelines.batch.test_stages import SIZE, FakeConditioner, _inputs, _request

KEEP = ProcessingOptions(keep_windows=True)


@pytest.fixture(scope="module")
def model():
    import mf_model

    return mf_model.MotionFollower.random("tiny")


@pytest.fixture
def cfg(tmp_path):
    return RunConfig(manifest="", out=str(tmp_path / "out"), processing=KEEP)


def _fused(cfg, **kw):
    # 10 source frames, window 2 / overlap 1: 9 windows → fusion groups of 5 and 4
    return _request(cfg, fusion="fused", window=2, overlap=1, **kw)


def _plan(cfg, req):
    return plan_request(req, _inputs(req, "tiny", cfg.processing), cfg, FakeConditioner())


def _edit_all(cfg, tasks, model):
    cond = FakeConditioner()
    return [edit_task(prepare_task(t, cond), model, model.identity(), cfg) for t in tasks]


def test_the_fusion_column_is_validated_and_keys_only_fused_requests(cfg):
    assert _request(cfg).fusion == "crossfade" and _request(cfg, fusion=" FUSED ").fusion == "fused"
    with pytest.raises(ValueError, match="column 'fusion': must be one of crossfade, fused"):
        _request(cfg, fusion="blend")
    # crossfade requests keep the request ids, window ids and keys they had before the column
    plain, fused = parse_row({"source": "/s.mp4", "driving": "/d.mp4"}, 1, cfg.out), \
        parse_row({"source": "/s.mp4", "driving": "/d.mp4", "fusion": "fused"}, 1, cfg.out)
    assert "fusion" not in plain.edit_params() and fused.edit_params()["fusion"] == "fused"
    assert plain.request_id != fused.request_id


def test_the_serve_form_takes_fusion(tmp_path):
    from fastapi import HTTPException
    from starlette.datastructures import FormData

    from jobs.serve.config import ServeConfig
    from jobs.serve.inputs import REQUEST_FIELDS, parse_edit

    assert "fusion" in REQUEST_FIELDS
    req = parse_edit(FormData([("fusion", "fused")]), "e1", str(tmp_path), ServeConfig())
    assert req.fusion == "fused"
    with pytest.raises(HTTPException, match="fusion"):
        parse_edit(FormData([("fusion", "nope")]), "e1", str(tmp_path), ServeConfig())


def test_a_fused_request_is_one_task_per_group_and_gives_a_video(cfg, model):
    req = _fused(cfg)
    tasks = _plan(cfg, req)
    assert [len(t.members) for t in tasks] == [5, 4] and all(t.count == 2 and t.pending for t in tasks)
    assert [m.index for t in tasks for m in t.members] == list(range(9))
    assert [(t.index, t.start, t.end) for t in tasks] == [(0, 0, 6), (5, 5, 10)]  # the groups' spans
    windows = storage.join(cfg.out, "windows", "r1")  # a group's own uri (its attempt counter's place) is no window
    assert all(t.uri.startswith(windows) and t.uri not in {m.uri for m in t.members} for t in tasks)
    back = tasks_from_table(tasks_to_table(tasks))  # a group task crosses Ray Data as one row of TASK_SCHEMA
    assert tasks_to_table(back).equals(tasks_to_table(tasks)) and "group" in TASK_SCHEMA.names
    t0 = time.perf_counter()
    done = _edit_all(cfg, tasks, model)
    fused_s = time.perf_counter() - t0
    assert all(t.status == SUCCEEDED for t in done), [t.error for t in done]
    for t in done:  # one file per member window, as crossfade mode writes them; a group agrees on its shared frames
        frames = {m.index: storage.read_npz(m.uri)["frames"] for m in t.members}
        assert all(f.shape == (m.end - m.start, SIZE, SIZE, 3) for m, f in zip(t.members, frames.values()))
        for a, b in zip(t.members, t.members[1:]):
            np.testing.assert_array_equal(frames[a.index][b.start - a.start:], frames[b.index][:a.end - b.start])
    row = finish_request(done, cfg)
    assert row.status == "succeeded", row.error
    assert row.fusion == "fused" and row.windows == 9 and row.frames == 10
    assert probe_output(row.output_uri)["frames"] == 10

    plain = _request(cfg, request_id="r2", window=2, overlap=1)
    t0 = time.perf_counter()
    crossfaded = _edit_all(cfg, _plan(cfg, plain), model)
    crossfade_s = time.perf_counter() - t0
    assert len(crossfaded) == 9
    plain_row = finish_request(crossfaded, cfg)
    assert plain_row.status == "succeeded" and plain_row.fusion == "crossfade" and plain_row.windows == 9
    print(f"tiny 64px 2 steps, 9 windows of 2 frames: fused {fused_s:.2f}s, crossfade {crossfade_s:.2f}s")


def test_fusion_and_the_group_composition_change_the_window_ids(cfg, monkeypatch):
    from pipelines.batch import stages

    plain = {m.window_id for t in _plan(cfg, _request(cfg, window=2, overlap=1)) for m in t.members}
    fused_tasks = _plan(cfg, _fused(cfg))
    fused = [m.window_id for t in fused_tasks for m in t.members]
    assert len(plain) == len(set(fused)) == 9 and not plain & set(fused)
    assert len({t.window_id for t in fused_tasks} | set(fused)) == 11  # group ids differ from member ids
    monkeypatch.setattr(stages, "_fusion_groups", lambda n: [range(0, 3), range(3, n)])
    regrouped = [m.window_id for t in _plan(cfg, _fused(cfg)) for m in t.members]
    assert all(a != b for a, b in zip(fused, regrouped))  # every group changed: so did every window's id


def test_a_rerun_skips_finished_groups_and_redoes_a_partial_group_whole(cfg, model):
    req = _fused(cfg)
    _edit_all(cfg, _plan(cfg, req), model)
    again = _plan(cfg, req)
    assert [t.status for t in again] == [SKIPPED, SKIPPED]
    storage.remove(again[1].members[2].uri)  # one window of the second group is lost
    partial = _plan(cfg, req)
    assert [t.status for t in partial] == [SKIPPED, PENDING]
    before = {m.uri: storage.read_npz(m.uri)["frames"] for m in partial[1].members if storage.exists(m.uri)}
    redone = _edit_all(cfg, partial, model)
    assert [t.status for t in redone] == [SKIPPED, SUCCEEDED]
    for m in redone[1].members:  # the whole group was redone, to the same frames
        assert storage.exists(m.uri)
        if m.uri in before:
            np.testing.assert_array_equal(storage.read_npz(m.uri)["frames"], before[m.uri])
    assert finish_request(redone, cfg).status == "succeeded"


def test_a_one_window_fused_request_equals_the_crossfade_one_bit_for_bit(cfg, model):
    fused_req = _request(cfg, fusion="fused", window=12, overlap=4)  # 10 frames: one window
    plain_req = _request(cfg, window=12, overlap=4)
    fused, plain = _edit_all(cfg, _plan(cfg, fused_req), model), _edit_all(cfg, _plan(cfg, plain_req), model)
    assert len(fused) == len(plain) == 1 and fused[0].fused and not plain[0].fused
    assert fused[0].members[0].window_id != plain[0].window_id
    np.testing.assert_array_equal(storage.read_npz(fused[0].members[0].uri)["frames"],
                                  storage.read_npz(plain[0].uri)["frames"])


def test_the_in_process_path_edits_groups_and_cancels_between_and_inside_them(cfg, model):
    req = _fused(cfg, request_id="single")
    seen = []
    row = edit_request(req, cfg, model, conditioner=FakeConditioner(), model_key="tiny",
                       progress=lambda *a: seen.append(a))
    assert row.status == "succeeded" and row.fusion == "fused" and row.windows == 9
    assert ("window", 2, 2) in seen and seen[-1] == ("request", 1, 1)
    assert edit_request(req, cfg, model, conditioner=FakeConditioner(), model_key="tiny").status == "skipped"

    other = dataclasses.replace(req, request_id="cancelled", output=storage.join(cfg.out, "videos", "c.mp4"))
    calls = []

    def cancel():  # false before prepare and edit, then true at the 3rd window step of the first group
        calls.append(1)
        return len(calls) > 4

    with pytest.raises(Cancelled):
        edit_request(other, cfg, model, conditioner=FakeConditioner(), model_key="tiny", cancel=cancel)
    assert len(calls) == 5 and not storage.exists(storage.join(cfg.out, "windows", "cancelled"))
    assert not storage.exists(other.output)


def test_ray_pipeline_runs_a_fused_and_a_crossfade_request(ray_local, inputs, tmp_path):  # noqa: F811
    from pipelines.batch.driver import run_pipeline
    from pipelines.batch.results import read_results

    base = {"source": str(inputs / "person.mp4"), "driving": str(inputs / "waving.parquet"), **PARAMS}
    write_manifest([{**base, "request_id": "fused", "fusion": "fused"}, {**base, "request_id": "xfade"}],
                   str(tmp_path / "two.csv"))
    out = tmp_path / "out"
    cfg = RunConfig(manifest=str(tmp_path / "two.csv"), out=str(out), processing=KEEP)
    assert [r.fusion for r in read_manifest(cfg.manifest, cfg.out).requests] == ["fused", "crossfade"]
    summary = run_pipeline(cfg)
    rows = {r["request_id"]: r for r in read_results(str(out / "results.parquet"))}
    assert summary.counts == {"succeeded": 2}, rows
    assert rows["fused"]["fusion"] == "fused" and rows["xfade"]["fusion"] == "crossfade"
    for r in rows.values():
        assert r["frames"] == FRAMES and r["windows"] == 2 and probe_output(r["output_uri"])["frames"] == FRAMES
    fused_files = sorted(p.name for p in (out / "windows" / "fused").glob("*.npz"))
    xfade_files = sorted(p.name for p in (out / "windows" / "xfade").glob("*.npz"))
    assert len(fused_files) == len(xfade_files) == 2 and not set(fused_files) & set(xfade_files)
    assert summary.windows.get("succeeded") == 4  # windows, whether edited apart or in a group
    again = run_pipeline(cfg)
    assert again.counts == {"skipped": 2}
