"""The Ray Data stage classes of the batch pipeline: thin wrappers of :mod:`pipelines.batch.stages` that declare
their own resources. Blocks are Arrow tables of :data:`~pipelines.batch.tasks.TASK_SCHEMA`, one window per batch.

Failures never raise out of a stage: a bad request or window becomes a ``failed`` task. Ray Data's fail-hard
defaults are kept on purpose (:func:`configure_data_context`: ``max_errored_blocks=0`` — an exception escaping a
stage is a bug and stops the run; application errors are not retried — they are deterministic). System failures are
retried: Ray Data's actor pool restarts a dead actor and resubmits its window (its defaults ``max_restarts=-1,
max_task_retries=-1``, which also avoid the hang of a permanently dead actor in a fixed-size pool, ray#62746). The
bound is ours: :class:`EditStage` counts the attempts per window and run in ``<window>.npz.attempts-<run_id>`` and
fails the window (not the job) after ``1 + max_retries`` attempts.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import pyarrow as pa

from pipelines.batch.config import RunConfig
from pipelines.batch.identity import RequestIdentity
from pipelines.batch.requests import Request
from pipelines.batch.stages import conditioner_for, edit_task, plan_request, prepare_task
from pipelines.batch.tasks import FAILED, INPUTS_TYPE, REQUEST_TYPE, error_text, tasks_from_table, tasks_to_table
from pipelines.media import storage

log = logging.getLogger(__name__)

REQUEST_SCHEMA = pa.schema([("request", REQUEST_TYPE), ("inputs", INPUTS_TYPE)])


def requests_table(req: Request, inputs: RequestIdentity) -> pa.Table:
    """The plan stage's input block for one request."""
    return pa.Table.from_pylist([{"request": req.to_dict(), "inputs": dataclasses.asdict(inputs)}],
                                schema=REQUEST_SCHEMA)


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


def plan_batch(batch: pa.Table, cfg: RunConfig) -> pa.Table:
    """The plan stage (a Ray task per request): a request row in, its window tasks out."""
    cond = conditioner_for(cfg)
    tasks = [t for row in batch.to_pylist()
             for t in plan_request(Request(**row["request"]), RequestIdentity(**row["inputs"]), cfg, cond)]
    return tasks_to_table(tasks)


class PrepareStage:
    """CPU actor of the prepare stage (wraps :func:`~pipelines.batch.stages.prepare_task`)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cond = conditioner_for(cfg)
        self.node = _node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        tasks = tasks_from_table(batch)
        for t in tasks:
            t.prepare_node = self.node
        return tasks_to_table([prepare_task(t, self.cond) for t in tasks])

    @staticmethod
    def map_args(cfg: RunConfig) -> dict[str, Any]:
        import ray.data

        res = cfg.resources
        return dict(compute=ray.data.ActorPoolStrategy(size=max(1, res.prepare_actors)), num_cpus=res.prepare_cpus,
                    memory=res.prepare_memory, resources=dict(res.prepare_resources) or None)


class EditStage:
    """The GPU actor: holds the model for its lifetime, edits one window per call (wraps
    :func:`~pipelines.batch.stages.edit_task`) and bounds the attempts of a window whose actor died."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        t0 = time.perf_counter()
        self.model = cfg.model.load()
        self.model_identity = self.model.identity()
        self.node = _node_id()
        log.info("edit actor loaded %s in %.1fs", self.model_identity, time.perf_counter() - t0)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for task in tasks_from_table(batch):
            task.edit_node = self.node
            if task.pending:
                task = self._attempt(task)
            task.payload = None
            out.append(task)
        return tasks_to_table(out)

    def _attempt(self, task):
        """Edit unless this window's actor already died ``1 + max_retries`` times in this run."""
        counter = f"{task.uri}.attempts-{self.cfg.run_id}"
        try:
            attempts = int(storage.read_bytes(counter)) if storage.exists(counter) else 0
            if attempts > self.cfg.processing.max_retries:
                task.status, task.error = FAILED, (
                    f"edit window {task.index}: the edit actor died {attempts} times on this window "
                    f"(max_retries={self.cfg.processing.max_retries})")
                return task
            storage.atomic_write_text(counter, str(attempts + 1))
        except Exception as exc:  # noqa: BLE001 - storage trouble fails this window, never the run
            return task.fail("edit", OSError(f"attempt counter {counter}: {error_text(exc)}"))
        task = self.edit(task)
        try:
            storage.remove(counter)
        except Exception as exc:  # noqa: BLE001 - a leftover counter only bounds this run's retries
            log.warning("could not remove %s: %s", counter, exc)
        return task

    def edit(self, task):
        return edit_task(task, self.model, self.model_identity, self.cfg)

    @staticmethod
    def map_args(cfg: RunConfig) -> dict[str, Any]:
        import ray.data

        res = cfg.resources
        return dict(compute=ray.data.ActorPoolStrategy(size=max(1, res.actors)),
                    num_gpus=res.gpus_per_actor or None, num_cpus=res.cpus_per_actor,
                    resources=dict(res.edit_resources) or None)
