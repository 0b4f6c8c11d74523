"""The batch stage functions in-process, without Ray: plan → prepare → edit → finish with small fakes (a conditioner
that returns arrays, a model that returns frames), real storage and a real ffmpeg encode; the typed window task's
Arrow round trip; the resource fitting; and the content key: what re-runs a finished request (driver triage and
``single.edit_request``) and what does not."""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from pipelines.batch.config import ProcessingOptions, RunConfig, StageResources
from pipelines.batch.driver import triage
from pipelines.batch.finish import finish_request, skipped_row
from pipelines.batch.identity import NON_OUTPUT_OPTIONS, OUTPUT_OPTIONS, model_key, request_identity
from pipelines.batch.requests import parse_row, read_manifest, write_manifest
from pipelines.batch.single import edit_request
from pipelines.batch.stages import Conditioner, edit_task, plan_request, plan_row, prepare_task
from pipelines.batch.tasks import PLAN_FAILED, TASK_SCHEMA, RequestPlan, WindowTask, tasks_from_table, tasks_to_table
from pipelines.conditioning.align import AlignTransform
from pipelines.conditioning.window_inputs import MODEL_INPUTS
from pipelines.media import InputError, VideoInfo, storage
from pipelines.media.encode import probe_output

SIZE = 64


class FakeConditioner(Conditioner):
    """10 source frames at 24 fps, a 12-frame driving video, no alignment, flat grey window arrays."""

    def __init__(self, fail_probe: bool = False, fail_prepare: bool = False) -> None:
        super().__init__()
        self.fail_probe, self.fail_prepare = fail_probe, fail_prepare
        self.probed: list[str] = []

    def probe(self, uri, fps=None):
        self.probed.append(uri)
        if self.fail_probe:
            raise InputError(uri, "not a video")
        return VideoInfo(uri=uri, frames=10, fps=24.0, width=48, height=32)

    def driving(self, uri):
        self.probed.append(uri)
        return VideoInfo(uri=uri, frames=12, fps=24.0, width=48, height=32)

    def alignment(self, req, source_indices, driving_map, source_info, driving, subjects=(None, None)):
        return AlignTransform(version=1, size=(req.size, req.size), global_scale=1.0, bone_scale={}, src_anchor=None,
                              drv_anchor=None, width_ratio=1.0)

    def window_arrays(self, task):
        if self.fail_prepare:
            raise RuntimeError("decoder broke")
        n = len(task.source_indices)
        frames = np.stack([np.full((SIZE, SIZE, 3), 10 * i, np.uint8) for i in task.source_indices])
        masks = np.full((n, SIZE, SIZE), 255, np.uint8)
        return {"source_frames": frames, "source_poses": frames, "target_poses": frames, "source_masks": masks,
                "target_masks": masks}


class FakeModel:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0

    def identity(self):
        return {"model": "fake", "weights_id": "fake-1", "estimator": "shared", "dtype": "float32", "device": "cpu"}

    def edit(self, window, opts, progress=None):
        self.calls += 1
        if self.fail:
            raise RuntimeError("out of memory")
        return SimpleNamespace(frames=255 - window.source_frames)


@pytest.fixture
def cfg(tmp_path):
    return RunConfig(manifest="", out=str(tmp_path / "out"))


def _request(cfg, **kw):
    raw = {"request_id": "r1", "source": "/data/src.mp4", "driving": "/data/drv.mp4", "size": SIZE, "window": 6,
           "overlap": 2, "steps": 2, **kw}
    return parse_row(raw, row=1, out=cfg.out)


def _inputs(req, model="fake-model", processing=None):
    return request_identity(req, model, processing or ProcessingOptions())


def _run(cfg, req, cond=None, model=None, model_key="fake-model"):
    cond, model = cond or FakeConditioner(), model or FakeModel()
    tasks = plan_request(req, _inputs(req, model_key, cfg.processing), cfg, cond)
    return [edit_task(prepare_task(t, cond), model, model.identity(), cfg) for t in tasks]


def test_plan_probes_each_input_once_and_covers_every_frame(cfg):
    cond = FakeConditioner()
    tasks = plan_request(_request(cfg), _inputs(_request(cfg)), cfg, cond)
    assert cond.probed == ["/data/src.mp4", "/data/drv.mp4"]
    assert [(t.start, t.end) for t in tasks] == [(0, 6), (4, 10)]
    assert all(t.status == "pending" and t.count == 2 and t.plan.frames == 10 for t in tasks)
    assert tasks[1].source_indices == list(range(4, 10))
    assert len({t.window_id for t in tasks}) == 2 and all(t.uri.endswith(f"{t.window_id}.npz") for t in tasks)


def test_plan_of_a_frame_range_and_a_bad_input(cfg):
    tasks = plan_request(_request(cfg, frame_start=3, frame_end=10), _inputs(_request(cfg)), cfg, FakeConditioner())
    assert [t.source_indices for t in tasks] == [list(range(3, 9)), list(range(4, 10))]
    assert [t.driving_indices for t in tasks] == [list(range(0, 6)), list(range(1, 7))]
    (failed,) = plan_request(_request(cfg), _inputs(_request(cfg)), cfg, FakeConditioner(fail_probe=True))
    assert failed.index == PLAN_FAILED and failed.status == "failed"
    assert failed.error.startswith("plan: InputError: /data/src.mp4") and "not a video" in failed.error


def test_prepare_and_edit_write_the_window_and_fail_their_own_row(cfg):
    tasks = _run(cfg, _request(cfg))
    assert [t.status for t in tasks] == ["succeeded", "succeeded"]
    z = storage.read_npz(tasks[0].uri)
    np.testing.assert_array_equal(z["frames"][1], np.full((SIZE, SIZE, 3), 245, np.uint8))
    assert json.loads(str(z["identity"]))["weights_id"] == "fake-1"
    assert tasks[0].payload is None and tasks[0].model_identity["model"] == "fake"
    assert tasks[0].times.model is not None and tasks[0].times.prepare is not None
    bad = _run(cfg, _request(cfg, request_id="r2"), cond=FakeConditioner(fail_prepare=True))
    assert bad[1].error == "prepare window 1: RuntimeError: decoder broke"
    model = FakeModel(fail=True)
    bad = _run(cfg, _request(cfg, request_id="r3"), model=model)
    assert bad[0].error == "edit window 0: RuntimeError: out of memory" and model.calls == 2


def test_prepare_payload_holds_the_model_inputs_only(cfg):
    (task, _) = plan_request(_request(cfg), _inputs(_request(cfg)), cfg, FakeConditioner())
    task = prepare_task(task, FakeConditioner())
    import io

    with np.load(io.BytesIO(task.payload)) as z:
        assert sorted(z.files) == sorted(MODEL_INPUTS)


def test_finish_stitches_a_video_deletes_its_windows_and_a_rerun_skips_it(cfg):
    req = _request(cfg)
    row = finish_request(_run(cfg, req), cfg)
    assert row.status == "succeeded", row.error
    assert (row.frames, row.windows, row.model, row.weights_id) == (10, 2, "fake", "fake-1")
    meta = probe_output(row.output_uri)
    assert meta["frames"] == 10 and (meta["width"], meta["height"]) == (48, 32)  # the source size
    assert row.bytes_written == storage.open_fs(row.output_uri)[0].size(row.output_uri) > 0
    assert not storage.exists(storage.join(cfg.out, "windows", "r1"))  # intermediate windows are gone
    assert skipped_row(req, _inputs(req), cfg).status == "skipped"


def test_kept_windows_are_reused(cfg):
    cfg = dataclasses.replace(cfg, processing=ProcessingOptions(keep_windows=True))
    req = _request(cfg)
    assert finish_request(_run(cfg, req), cfg).status == "succeeded"
    assert len(storage.listdir(storage.join(cfg.out, "windows", "r1"))) == 2
    model = FakeModel()
    again = _run(cfg, req, model=model)  # the windows are on storage: nothing is edited again
    assert [t.status for t in again] == ["skipped", "skipped"] and model.calls == 0


def test_finish_reports_the_first_failed_window(cfg):
    tasks = _run(cfg, _request(cfg), model=FakeModel(fail=True))
    row = finish_request(tasks, cfg)
    assert row.status == "failed" and row.error.startswith("edit window 0:") and row.windows == 2
    assert not storage.exists(row.output_uri)


def test_window_task_round_trips_through_arrow(cfg):
    (task, _) = plan_request(_request(cfg), _inputs(_request(cfg)), cfg, FakeConditioner())
    task.plan.transform = dataclasses.replace(task.plan.transform, mode="bones", bone_scale={"1-2": 1.5},
                                              src_anchor=[1.0, 2.0], keep_x=True)
    task.payload = b"npz"
    table = tasks_to_table([task])
    assert table.schema == TASK_SCHEMA
    assert pa.types.is_struct(table.schema.field("request").type)
    assert pa.types.is_list(table.schema.field("source_indices").type)
    (back,) = tasks_from_table(table)
    # a transform field whose value is None comes back None
    assert back.plan.transform == task.plan.transform and back.plan.transform.drv_anchor is None
    assert back == task
    # a transform with a field the task schema does not know fails where it crosses in (JSON, a dict)
    with pytest.raises(ValueError, match="new_key"):
        AlignTransform.from_dict({**task.plan.transform.to_dict(), "new_key": 1.0})


def test_request_plan_keeps_a_partial_transform_as_its_defaults():
    """A transform dict with fields left out (version 1) means their defaults, before and after the round trip."""
    plan = RequestPlan(frames=1, fps="24/1", source_fps=24.0, has_audio=False,
                       geometry={"scale": 1.0, "ox": 0, "oy": 0}, source_hw=(8, 8),
                       transform=AlignTransform.from_dict({"version": 1}))
    table = pa.Table.from_pylist([{"plan": plan.to_row()}], schema=pa.schema([TASK_SCHEMA.field("plan")]))
    assert RequestPlan.from_row(table.to_pylist()[0]["plan"]).transform == AlignTransform(version=1)


def test_window_task_defaults_are_a_failed_plan_shape(cfg):
    t = WindowTask(_request(cfg), _inputs(_request(cfg))).fail("plan", ValueError("x"))
    assert t.plan_failed and t.error == "plan: ValueError: x"


@pytest.mark.parametrize("cpus, expect", [
    (16, StageResources()),  # fits: unchanged
    (2, StageResources(cpus_per_actor=0.75, prepare_cpus=0.75, plan_cpus=0.25, stitch_cpus=0.25)),
])
def test_resources_fit_the_cluster(cpus, expect):
    fitted = StageResources().fit(cpus)
    assert fitted == expect
    need = fitted.cpus_per_actor + fitted.prepare_cpus + fitted.plan_cpus + fitted.stitch_cpus
    assert need <= cpus


def test_resources_that_cannot_fit_raise():
    with pytest.raises(ValueError, match="cannot hold 40 edit"):
        StageResources(actors=40, prepare_actors=40).fit(2)
    assert StageResources(auto_fit=False).fit(0.5) == StageResources(auto_fit=False)


def _real_request(cfg, tmp_path, **kw):
    (tmp_path / "src.mp4").write_bytes(b"source v1")
    (tmp_path / "drv.mp4").write_bytes(b"driving")
    return _request(cfg, source=str(tmp_path / "src.mp4"), driving=str(tmp_path / "drv.mp4"), **kw)


def test_other_weights_a_replaced_source_or_other_parameters_recompute(cfg, tmp_path):
    req = _real_request(cfg, tmp_path)
    assert finish_request(_run(cfg, req), cfg).status == "succeeded"
    before = _inputs(req)
    assert skipped_row(req, before, cfg) is not None
    assert before.source.startswith("size:9;mtime:")
    other_weights = _inputs(req, model="other-weights")
    assert other_weights.key != before.key and skipped_row(req, other_weights, cfg) is None
    tasks = plan_request(req, other_weights, cfg, FakeConditioner())
    assert {t.window_id for t in tasks}.isdisjoint(t.window_id for t in plan_request(req, before, cfg,
                                                                                   FakeConditioner()))
    (tmp_path / "src.mp4").write_bytes(b"source version 2")  # replaced at the same path
    replaced = _inputs(req)
    assert replaced.source != before.source and skipped_row(req, replaced, cfg) is None
    more_steps = _request(cfg, source=req.source, driving=req.driving, steps=3)
    assert _inputs(more_steps).key != replaced.key
    rerun = finish_request(_run(cfg, req), cfg)  # the replaced source is edited again and recorded
    assert rerun.source_identity == replaced.source and rerun.content_key == replaced.key


# an other value of each output option; every one is valid (the fakes ignore pose_backend)
OTHER_OUTPUT = {"pose_backend": "dwpose", "fit_mode": "crop", "crossfade": False, "output_scale": "model",
                "encode_preset": "veryfast", "encode_crf": 23}
OTHER_NON_OUTPUT = {"max_retries": 5, "compress_windows": True, "keep_windows": True}


def test_every_processing_option_is_in_or_out_of_the_key():
    """A new ProcessingOptions field must be placed: does it change the written windows or video?"""
    names = {f.name for f in dataclasses.fields(ProcessingOptions)}
    assert set(OUTPUT_OPTIONS) | set(NON_OUTPUT_OPTIONS) == names
    assert not set(OUTPUT_OPTIONS) & set(NON_OUTPUT_OPTIONS)
    assert set(OTHER_OUTPUT) == set(OUTPUT_OPTIONS) and set(OTHER_NON_OUTPUT) == set(NON_OUTPUT_OPTIONS)
    defaults = ProcessingOptions()
    assert all(getattr(defaults, k) != v for k, v in {**OTHER_OUTPUT, **OTHER_NON_OUTPUT}.items())


def _finished(cfg, tmp_path):
    """A request finished by ``edit_request`` in a run of ``cfg``, and the manifest that names it."""
    (tmp_path / "src.mp4").write_bytes(b"source v1")
    (tmp_path / "drv.mp4").write_bytes(b"driving")
    write_manifest([{"request_id": "r1", "source": str(tmp_path / "src.mp4"), "driving": str(tmp_path / "drv.mp4"),
                     "size": SIZE, "window": 6, "overlap": 2, "steps": 2}], str(tmp_path / "m.jsonl"))
    man = read_manifest(str(tmp_path / "m.jsonl"), cfg.out)
    req = man.requests[0]
    row = edit_request(req, cfg, FakeModel(), conditioner=FakeConditioner())
    assert row.status == "succeeded", row.error
    return man, req, row


def _triaged(man, cfg):
    """The driver's triage, then the plan stage's done check (:func:`plan_row`): (planned, rows)."""
    rows, planned = [], []
    for row in triage(man, cfg, rows.append):
        assert row.identity is None  # the driver looks nothing up per request
        tasks = plan_row(row, cfg, FakeConditioner(), model_key(cfg.model))
        if tasks[0].request_done:
            rows.append(tasks[0].result)
        else:
            planned.append(row.request.request_id)
    return planned, [(r.request_id, r.status) for r in rows]


@pytest.mark.parametrize("option", OUTPUT_OPTIONS)
def test_an_output_option_changes_the_key_and_runs_a_finished_request_again(cfg, tmp_path, option):
    man, req, row = _finished(cfg, tmp_path)
    assert _triaged(man, cfg) == ([], [("r1", "skipped")])
    assert edit_request(req, cfg, FakeModel(), conditioner=FakeConditioner()).status == "skipped"
    other = dataclasses.replace(cfg, processing=dataclasses.replace(cfg.processing, **{option: OTHER_OUTPUT[option]}))
    ident = _inputs(req, "m", other.processing)
    assert ident.key != row.content_key and ident.key != _inputs(req, "m", cfg.processing).key
    assert (ident.source, ident.driving) == (row.source_identity, row.driving_identity)
    assert skipped_row(req, ident, other) is None
    assert {t.window_id for t in plan_request(req, ident, other, FakeConditioner())}.isdisjoint(
        t.window_id for t in plan_request(req, _inputs(req, "m", cfg.processing), cfg, FakeConditioner()))
    assert _triaged(man, other) == (["r1"], [])  # the driver runs it again
    again = edit_request(req, other, FakeModel(), conditioner=FakeConditioner())  # and so does Serve's path
    assert again.status == "succeeded" and again.content_key != row.content_key


@pytest.mark.parametrize("option", NON_OUTPUT_OPTIONS)
def test_a_non_output_option_keeps_the_key_and_the_finished_request(cfg, tmp_path, option):
    man, req, row = _finished(cfg, tmp_path)
    other = dataclasses.replace(cfg, processing=dataclasses.replace(cfg.processing,
                                                                    **{option: OTHER_NON_OUTPUT[option]}))
    assert _inputs(req, "m", other.processing).key == _inputs(req, "m", cfg.processing).key
    assert _triaged(man, other) == ([], [("r1", "skipped")])
    model = FakeModel()
    assert edit_request(req, other, model, conditioner=FakeConditioner()).status == "skipped" and model.calls == 0


def test_a_cached_window_that_does_not_load_or_has_the_wrong_shape_is_recomputed(cfg):
    cfg = dataclasses.replace(cfg, processing=ProcessingOptions(keep_windows=True))
    req = _request(cfg)
    first, second = _run(cfg, req)
    fs, path = storage.open_fs(first.uri)
    with fs.open(path, "rb") as fh:
        data = fh.read()
    with fs.open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])  # truncated
    storage.write_npz(second.uri, frames=np.zeros((6, SIZE // 2, SIZE // 2, 3), np.uint8))  # wrong shape
    model = FakeModel()
    again = _run(cfg, req, model=model)
    assert [t.status for t in again] == ["succeeded", "succeeded"] and model.calls == 2
    assert storage.npz_shapes(first.uri)["frames"][0] == (6, SIZE, SIZE, 3)
    assert [t.status for t in plan_request(req, _inputs(req), cfg, FakeConditioner())] == ["skipped", "skipped"]


def test_a_storage_error_fails_the_window_with_the_reason(cfg, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    blocked = dataclasses.replace(cfg, out=str(tmp_path / "a-file" / "out"))
    tasks = _run(blocked, _request(blocked))
    assert [t.status for t in tasks] == ["failed", "failed"]
    assert tasks[0].error.startswith("edit window 0: ") and "a-file" in tasks[0].error


@pytest.mark.parametrize("rid", ["../../escaped", "a/b", "x::memory", "..", "bad\nname", "-x", "a" * 129])
def test_request_ids_are_strict(cfg, rid):
    with pytest.raises(ValueError, match="request_id"):
        _request(cfg, request_id=rid)


def test_a_bad_request_id_is_a_failed_row_with_a_safe_id(tmp_path):
    write_manifest([{"request_id": "../../escaped", "source": "s.mp4", "driving": "d.mp4"},
                    {"request_id": "ok.1_x-y", "source": "s.mp4", "driving": "d.mp4"}], str(tmp_path / "m.jsonl"))
    man = read_manifest(str(tmp_path / "m.jsonl"), str(tmp_path / "out"))
    assert [r.request_id for r in man.requests] == ["ok.1_x-y"]
    (bad,) = man.invalid
    assert "request_id" in bad.error and "/" not in bad.request_id and ".." not in bad.request_id



class SteppingModel(FakeModel):
    """Reports 10 sampler steps through ``progress``, as the real model does."""

    def edit(self, window, opts, progress=None):
        for step in range(10):
            self.calls += 1
            if progress:
                progress(step + 1, 10)
        return SimpleNamespace(frames=255 - window.source_frames)


def test_cancel_stops_between_sampler_steps_and_nothing_is_written(cfg):
    from pipelines.batch.cancel import Cancelled

    flips = iter([False] * 4 + [True] * 100)  # before prepare, before edit, then true at sampler step 3
    model = SteppingModel()
    req = _request(cfg)
    with pytest.raises(Cancelled):
        edit_request(req, cfg, model, conditioner=FakeConditioner(), model_key="m", cancel=lambda: next(flips))
    assert model.calls == 3  # stopped inside the first window, at the step it was cancelled (the third)
    assert not storage.exists(storage.join(cfg.out, "windows")) and not storage.exists(req.output)


def test_cancel_before_the_commit_leaves_no_video_and_no_marker(cfg):
    from pipelines.batch.cancel import Cancelled

    req = _request(cfg)
    tasks = _run(cfg, req)
    with pytest.raises(Cancelled):
        finish_request(tasks, cfg, cancel=lambda: True)
    assert not storage.exists(req.output) and skipped_row(req, _inputs(req), cfg) is None
    videos = storage.parent(req.output)
    assert not storage.exists(videos) or storage.listdir(videos) == []  # no temporary file left either
