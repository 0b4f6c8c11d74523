"""The Ray Data stages of the batch pipeline: plan, prepare, edit. Each is a :class:`~pipelines.batch.stage_base.Stage`
(resources from ``cfg.resources``, ``setup`` in its worker, one row per ``process``) around the plain stage functions
of :mod:`pipelines.batch.stages`; the driver adds them with :func:`~pipelines.batch.stage_base.add_stage`.

- :class:`PlanStage` — a Ray task per request (``plan_cpus``, ``plan_memory``): a
  :class:`~pipelines.batch.tasks.RequestRow` → its window tasks (:func:`~pipelines.batch.stages.plan_row`).
- :class:`PrepareStage` — a fixed CPU actor pool (``prepare_actors``, ``prepare_cpus``, ``prepare_memory``,
  ``prepare_resources``): a window → its model inputs (:func:`~pipelines.batch.stages.prepare_task`).
- :class:`EditStage` — a fixed actor pool holding the model (``actors``, ``gpus_per_actor``, ``cpus_per_actor``,
  ``edit_resources``): a window → edited and written (:func:`~pipelines.batch.stages.edit_task`).

A fused request's rows are its fusion groups (one task each, :class:`~pipelines.batch.tasks.GroupWindow` members):
a group is prepared by one prepare actor and edited by one edit actor (``model.edit_fused``), while the groups of a
request, and the requests, spread over the pools as windows do.

Failures never raise out of a stage: a bad request or window becomes a ``failed`` task. Ray Data's fail-hard
defaults are kept on purpose (:func:`configure_data_context`: ``max_errored_blocks=0`` — an exception escaping a
stage is a bug and stops the run; application errors are not retried — they are deterministic). System failures are
retried: Ray Data's actor pool restarts a dead actor and resubmits its window (its defaults ``max_restarts=-1,
max_task_retries=-1``, which also avoid the hang of a permanently dead actor in a fixed-size pool, ray#62746). The
bound is ours (:mod:`pipelines.batch.retry`): :class:`EditStage` fails a window (not the job) after
``1 + max_retries`` attempts in a run. Tests subclass :class:`EditStage` and override :meth:`EditStage.edit`.
"""
from __future__ import annotations

import logging
import time

from pipelines.batch.config import RunConfig
from pipelines.batch.identity import model_key
from pipelines.batch.retry import bounded_attempt
from pipelines.batch.stage_base import Stage, Workers
from pipelines.batch.stages import conditioner_for, edit_task, plan_row, prepare_task
from pipelines.batch.tasks import RequestRow, WindowTask

log = logging.getLogger(__name__)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def configure_data_context() -> None:
    """Set Ray Data's failure behaviour deliberately (see the module docstring)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.max_errored_blocks = 0  # stages turn input errors into failed rows; anything escaping is a bug: stop
    ctx.actor_task_retry_on_errors = False  # application errors are deterministic: no retries
    ctx.enable_progress_bars = False  # the driver shows its own progress
    ctx.wait_for_min_actors_s = 600  # the model may take a while to load on a cold node


class PlanStage(Stage):
    """A request row in, its window tasks out (probe, length map, alignment, windows): a Ray task per request."""

    row_type = RequestRow

    def __init__(self, cfg: RunConfig, *, model: str = "", in_actor: bool = False) -> None:
        self.model_key = model  # the model's part of the content keys (identity.model_key), found once by the driver
        super().__init__(cfg, in_actor=in_actor)

    def workers(self) -> Workers:
        res = self.cfg.resources
        return Workers(num_cpus=res.plan_cpus, memory=res.plan_memory)

    def setup(self) -> None:
        self.cond = conditioner_for(self.cfg)
        self.model_key = self.model_key or model_key(self.cfg.model)

    def process(self, row: RequestRow) -> list[WindowTask]:
        return plan_row(row, self.cfg, self.cond, self.model_key)


class PrepareStage(Stage):
    """CPU actor: a window's frames decoded, posed, masked and rendered into its model inputs."""

    def workers(self) -> Workers:
        res = self.cfg.resources
        return Workers(num_cpus=res.prepare_cpus, memory=res.prepare_memory, resources=res.prepare_resources,
                       actors=res.prepare_actors)

    def setup(self) -> None:
        self.cond = conditioner_for(self.cfg)
        self.node = _node_id()

    def process(self, task: WindowTask) -> WindowTask:
        task.prepare_node = self.node
        return prepare_task(task, self.cond)


class EditStage(Stage):
    """The GPU actor: holds the model for its lifetime, edits one task per call (a window, or a fused group) and
    bounds the attempts of a task whose actor died (:func:`~pipelines.batch.retry.bounded_attempt`)."""

    def workers(self) -> Workers:
        res = self.cfg.resources
        return Workers(num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor, resources=res.edit_resources,
                       actors=res.actors)

    def setup(self) -> None:
        t0 = time.perf_counter()
        self.model = self.cfg.model.load()
        self.model_identity = self.model.identity()
        self.node = _node_id()
        log.info("edit actor loaded %s in %.1fs", self.model_identity, time.perf_counter() - t0)

    def process(self, task: WindowTask) -> WindowTask:
        task.edit_node = self.node
        if task.pending:
            task = bounded_attempt(task, self.cfg.run_id, self.cfg.processing.max_retries, self.edit)
        task.payload = None
        return task

    def edit(self, task: WindowTask) -> WindowTask:
        """One attempt at a pending window (tests override this to inject faults)."""
        return edit_task(task, self.model, self.model_identity, self.cfg)
