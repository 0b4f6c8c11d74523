"""The request columns of the alignment (``align_mode``) and of the chosen people (``source_subject``,
``driving_subject``): parsed and keyed as edit parameters, planned once per request (each task gets the part of
the subject's track its frames need, through Arrow), and, with the real pose backend, the pipeline's prepared
source poses follow the person the request points at rather than the most prominent one."""
from __future__ import annotations

import io

import numpy as np
import pytest

from pipelines.batch.requests import parse_row
from pipelines.batch.stages import Conditioner, plan_request, prepare_task
from pipelines.batch.tasks import tasks_from_table, tasks_to_table
from pipelines.conditioning.poses.subject import SubjectTrack
from tests.pipelines.batch.test_stages import FakeConditioner, _inputs, _request, cfg  # noqa: F401 - the fixture


def test_align_mode_is_an_edit_parameter_with_the_old_ids_at_its_default(cfg):  # noqa: F811
    plain = _request(cfg, request_id=None)
    assert plain.align_mode == "similarity" and plain.source_subject is None and plain.driving_subject is None
    assert not {"align_mode", "source_subject", "driving_subject"} & set(plain.edit_params())
    assert _request(cfg, request_id=None, align_mode="similarity").request_id == plain.request_id
    limbs = _request(cfg, request_id=None, align_mode=" LIMBS ")
    assert limbs.align_mode == "limbs" and limbs.edit_params()["align_mode"] == "limbs"
    assert limbs.request_id != plain.request_id
    with pytest.raises(ValueError, match="column 'align_mode': must be one of similarity, limbs, silhouette, "
                                         "got 'bones'"):
        _request(cfg, align_mode="bones")


@pytest.mark.parametrize("value", ["250,300", " 250 300 ", "[250, 300]", '{"point": [250, 300]}', [250, 300],
                                   np.array([250.0, 300.0]), {"point": (250, 300)}])
def test_a_subject_point_in_any_form_is_one_canonical_value(cfg, value):  # noqa: F811
    req = _request(cfg, request_id=None, source_subject=value)
    assert req.source_subject == '{"point":[250,300]}'
    assert req.edit_params()["source_subject"] == req.source_subject
    assert req.request_id != _request(cfg, request_id=None).request_id


@pytest.mark.parametrize("value, message", [
    ("1,2,3", "must be a point x,y or a box x0,y0,x1,y1"),
    ("30,40,10,50", "subject box must be x0 < x1 and y0 < y1"),
    ("nan,3", "must be 2 finite numbers"),
    ('{"centre": [1, 2]}', "unknown key"),
    ("[1, 2", "not valid JSON"),
])
def test_a_bad_subject_fails_its_row_naming_the_column(cfg, value, message):  # noqa: F811
    with pytest.raises(ValueError, match=rf"column 'driving_subject': .*{message}"):
        _request(cfg, driving_subject=value)


def test_a_driving_subject_needs_a_driving_video(cfg):  # noqa: F811
    with pytest.raises(ValueError, match="column 'driving_subject': is for a driving video"):
        _request(cfg, driving="/data/motion.parquet", driving_subject="10,10")
    assert _request(cfg, driving="/data/motion.parquet", source_subject="10,10").source_subject


class SubjectConditioner(FakeConditioner):
    """The fake's 10 source / 12 driving frames, with the chosen people boxed on every second frame; records the
    subject each prepared window was given."""

    def __init__(self) -> None:
        super().__init__()
        self.given = []

    def subjects(self, req, source_indices, driving_map, source_info, driving):
        def track(indices):
            frames = sorted(set(indices))[::2]
            return SubjectTrack(tuple(frames), tuple((f, 0.0, f + 10.0, 20.0) for f in frames))

        return (track(source_indices) if req.source_subject else None,
                track(driving_map) if req.driving_subject else None)

    def window_arrays(self, task):
        self.given.append((task.source_subject, task.driving_subject))
        return super().window_arrays(task)


def test_each_task_gets_its_part_of_the_track_through_arrow(cfg):  # noqa: F811
    req = _request(cfg, source_subject="5,5", driving_subject="1,1,9,9")
    cond = SubjectConditioner()
    tasks = plan_request(req, _inputs(req), cfg, cond)
    assert [(t.start, t.end) for t in tasks] == [(0, 6), (4, 10)]
    moved = tasks_from_table(tasks_to_table(tasks))  # plan → prepare crosses Ray Data as Arrow
    second = moved[1].source_subject
    assert second.frames == (4, 6, 8) and second.boxes[0] == (4.0, 0.0, 14.0, 20.0)
    for t in moved:  # what the window needs: the same answer as the whole track for each of its frames
        whole = cond.subjects(req, list(range(10)), list(range(10)), None, None)[0]
        assert all(t.source_subject.hint_at(f) == whole.hint_at(f) for f in t.source_indices)
        assert t.driving_subject.frames[0] <= t.driving_indices[0]
    for t in moved:
        assert prepare_task(t, cond).payload
    assert [g[0].frames for g in cond.given] == [(0, 2, 4), (4, 6, 8)]
    plain = plan_request(_request(cfg), _inputs(_request(cfg)), cfg, SubjectConditioner())
    assert all(t.source_subject is None and t.driving_subject is None for t in tasks_from_table(
        tasks_to_table(plain)))


@pytest.mark.shared
def test_the_pipeline_prepares_the_person_the_request_points_at(cfg, fixture_cases, tmp_path):  # noqa: F811
    """case-1's source with a second person pasted beside the dancer (``benchmarks.prepare_validation``'s
    bystander), as a 512² frame folder; the request, at size 256, points at the bystander in the video's pixels.
    The prepared source poses (MediaPipe) lie on the bystander; without the column, on the dancer."""
    import cv2

    from benchmarks import prepare_validation as V

    d = V.load_case(fixture_cases / "case-1", 4)
    frames, masks = np.stack(d["source_images"]), np.stack(d["source_masks"]) > 127
    src = V._with_bystander(frames, masks.astype(np.uint8) * 255, d["target_images"], d["target_masks"])
    pasted = (np.abs(src.astype(int) - frames.astype(int)).sum(-1) > 30) & ~masks
    folder = tmp_path / "two_people"
    folder.mkdir()
    for k, im in enumerate(src):
        cv2.imwrite(str(folder / f"frame_{k}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    ys, xs = np.nonzero(pasted[0])
    point = f"{np.median(xs):.0f},{np.median(ys):.0f}"

    def pose_pixels(**kw):
        req = parse_row({"request_id": "two", "source": str(folder), "driving": str(folder), "size": 256,
                         "window": 4, "overlap": 0, "steps": 2, **kw}, row=1, out=cfg.out)
        (task,) = plan_request(req, _inputs(req), cfg, Conditioner())
        assert task.status == "pending", task.error
        task = prepare_task(task, Conditioner())
        assert task.status == "pending", task.error
        with np.load(io.BytesIO(task.payload)) as z:
            poses = z["source_poses"]
        return poses.max(-1) > 0  # drawn skeleton pixels, (4, 256, 256)

    def share_on(region, drawn):
        near = np.stack([cv2.resize(cv2.dilate(r.astype(np.uint8), np.ones((31, 31), np.uint8)), (256, 256),
                                    interpolation=cv2.INTER_NEAREST) for r in region]) > 0
        return float(near[drawn].mean())

    chosen, default = pose_pixels(source_subject=point), pose_pixels()
    assert chosen.sum() > 200 and default.sum() > 200
    assert share_on(pasted, chosen) > 0.8, "the chosen person's poses lie on the bystander"
    assert share_on(masks, default) > 0.8, "without a subject: the most prominent person"
