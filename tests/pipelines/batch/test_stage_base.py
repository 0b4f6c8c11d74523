"""The stage shape (:mod:`pipelines.batch.stage_base`) in-process, without a Ray cluster: a stage built on the driver
is not set up and says what it asks Ray for; run on Arrow blocks it sets up once, converts once and gives the same
tasks as the stage functions; the edit stage's attempt bound (:mod:`pipelines.batch.retry`)."""
from __future__ import annotations

import dataclasses

import pytest

from pipelines.batch.config import RunConfig, StageResources
from pipelines.batch.ray_stages import EditStage, PlanStage, PrepareStage
from pipelines.batch.retry import attempt_counter, bounded_attempt
from pipelines.batch.stages import plan_request
from pipelines.batch.tasks import TASK_SCHEMA, RequestRow, requests_table, tasks_from_table, tasks_to_table
from pipelines.media import storage
from tests.pipelines.batch.test_stages import FakeConditioner, FakeModel, _inputs, _request

RES = StageResources(actors=3, gpus_per_actor=0.5, cpus_per_actor=2.0, prepare_actors=2, prepare_cpus=1.5,
                     plan_cpus=0.25, plan_memory=123, prepare_memory=456, edit_resources=(("edit_node", 1.0),))


@pytest.fixture
def cfg(tmp_path):
    return RunConfig(manifest="", out=str(tmp_path / "out"), resources=RES, run_id="run1")


class Setups:
    """Counts ``setup`` calls; the conditioner and model are the unit tests' fakes, the node a fixed name."""

    setups = 0

    def setup(self):
        type(self).setups += 1
        self.cond, self.node = FakeConditioner(), "node-1"
        self.model = FakeModel()
        self.model_identity = self.model.identity()


class FakePlan(Setups, PlanStage):
    pass


class FakePrepare(Setups, PrepareStage):
    pass


class FakeEdit(Setups, EditStage):
    pass


def test_a_stage_built_on_the_driver_is_not_set_up_and_declares_its_resources(cfg):
    import ray.data

    plan, prep, edit = PlanStage(cfg), PrepareStage(cfg), EditStage(cfg)
    assert not any(hasattr(s, "cond") or hasattr(s, "model") for s in (plan, prep, edit))
    args = plan.map_batches_args()  # a task per request: this instance, shipped with the task
    assert args == dict(fn=plan, batch_size=1, batch_format="pyarrow", num_cpus=0.25, num_gpus=None, memory=123,
                        resources=None)
    args = prep.map_batches_args()  # an actor pool: the class, built in each actor with the config
    compute = args.pop("compute")
    assert isinstance(compute, ray.data.ActorPoolStrategy) and (compute.min_size, compute.max_size) == (2, 2)
    assert args == dict(fn=PrepareStage, fn_constructor_kwargs={"cfg": cfg, "in_actor": True}, batch_size=1,
                        batch_format="pyarrow", num_cpus=1.5, num_gpus=None, memory=456, resources=None)
    args = edit.map_batches_args()
    assert args.pop("compute").max_size == 3
    assert (args["fn"], args["num_gpus"], args["num_cpus"], args["memory"], args["resources"]) == (
        EditStage, 0.5, 2.0, None, {"edit_node": 1.0})
    cpu_only = EditStage(dataclasses.replace(cfg, resources=StageResources()))
    assert cpu_only.map_batches_args()["num_gpus"] is None


def test_built_in_an_actor_a_stage_is_set_up_at_once(cfg):
    FakeEdit.setups = 0
    stage = FakeEdit(cfg=cfg, in_actor=True)
    assert FakeEdit.setups == 1 and stage.ready


def test_plan_stage_is_a_request_row_in_and_its_window_tasks_out(cfg):
    FakePlan.setups = 0
    req = _request(cfg)
    stage = FakePlan(cfg)
    assert FakePlan.setups == 0
    out = stage(requests_table([RequestRow(req, _inputs(req))]))
    assert FakePlan.setups == 1 and out.schema == TASK_SCHEMA
    untimed = [dataclasses.replace(t, times=None) for t in plan_request(req, _inputs(req), cfg, FakeConditioner())]
    assert [dataclasses.replace(t, times=None) for t in tasks_from_table(out)] == untimed  # times differ only


def test_prepare_and_edit_stages_run_on_task_blocks_and_set_up_once(cfg):
    FakePrepare.setups = FakeEdit.setups = 0
    req = _request(cfg)
    table = tasks_to_table(plan_request(req, _inputs(req), cfg, FakeConditioner()))
    prep, edit = FakePrepare(cfg), FakeEdit(cfg)
    edited = [tasks_from_table(edit(prep(table.slice(i, 1))))[0] for i in range(table.num_rows)]
    assert FakePrepare.setups == FakeEdit.setups == 1
    assert [t.status for t in edited] == ["succeeded", "succeeded"]
    assert all(t.prepare_node == t.edit_node == "node-1" and t.payload is None for t in edited)
    assert edit.model.calls == 2 and all(storage.exists(t.uri) for t in edited)
    assert not any(storage.exists(attempt_counter(t, cfg.run_id)) for t in edited)


def test_a_window_whose_actor_died_too_often_fails_alone(cfg):
    (task, _) = plan_request(_request(cfg), _inputs(_request(cfg)), cfg, FakeConditioner())
    counter = attempt_counter(task, "run1")
    assert counter == f"{task.uri}.attempts-run1"
    storage.atomic_write_text(counter, "2")  # two deaths so far; max_retries=2 allows a third attempt
    calls = []
    done = bounded_attempt(task, "run1", 2, lambda t: calls.append(t) or t)
    assert len(calls) == 1 and done.status == "pending" and not storage.exists(counter)
    storage.atomic_write_text(counter, "3")  # three deaths: no fourth attempt
    done = bounded_attempt(task, "run1", 2, lambda t: calls.append(t) or t)
    assert len(calls) == 1 and done.status == "failed"
    assert done.error == "edit window 0: the edit actor died 3 times on this window (max_retries=2)"


def test_an_unreadable_attempt_counter_fails_the_window_with_the_reason(cfg):
    (task, _) = plan_request(_request(cfg), _inputs(_request(cfg)), cfg, FakeConditioner())
    storage.atomic_write_text(attempt_counter(task, "run1"), "not a number")
    done = bounded_attempt(task, "run1", 2, lambda t: pytest.fail("edited"))
    assert done.status == "failed" and done.error.startswith("edit window 0: OSError: attempt counter ")


def test_on_an_autoscaling_cluster_the_actor_pools_autoscale_between_one_and_their_size(cfg):
    """`StageResources.autoscale` (set by `for_cluster` on an autoscaling cluster): Ray Data's autoscaling actor
    pools, min 1, initial and max size the pool's size; a stage may state its own least size (`Workers.min_actors`);
    fixed otherwise."""
    import ray.data

    from pipelines.batch.stage_base import Workers

    grown = dataclasses.replace(cfg, resources=dataclasses.replace(RES, autoscale=True))
    for stage, size in ((PrepareStage(grown), 2), (EditStage(grown), 3)):
        compute = stage.map_batches_args()["compute"]
        assert isinstance(compute, ray.data.ActorPoolStrategy)
        assert (compute.min_size, compute.initial_size, compute.max_size) == (1, size, size)  # the whole pool asked
    edit = EditStage(grown)
    assert edit.pool_size(Workers(num_cpus=1, actors=3, min_actors=2)) == (2, 3, 3)
    assert edit.pool_size(Workers(num_cpus=1, actors=3, min_actors=9)) == (3, 3, 3)
    assert EditStage(cfg).pool_size(Workers(num_cpus=1, actors=3)) == (3, 3, 3)  # static: fixed
