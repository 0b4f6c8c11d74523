"""The shape of every Ray Data stage of the batch pipeline, and the one way the driver adds a stage to a dataset.

A stage is a small :class:`Stage` subclass (the stages are in :mod:`pipelines.batch.ray_stages`):

- ``row_type`` — the dataclass its input rows are: :class:`~pipelines.batch.tasks.WindowTask` (the default) or, for
  plan, :class:`~pipelines.batch.tasks.RequestRow`. Its output rows are always window tasks (``TASK_SCHEMA``).
- ``workers()`` — what each of its workers asks Ray for (:class:`Workers`, from ``cfg.resources``): CPUs, GPUs,
  memory, custom resources, and an actor pool of ``actors`` actors (fixed on a static cluster; on an autoscaling one
  a Ray Data autoscaling pool from 1 to ``actors``, started at ``actors``: :meth:`Stage.pool_size`), or a Ray task
  per batch (``actors=None``).
- ``setup()`` — its per-worker state (a model, a conditioner, the node id). It runs where the stage runs: once per
  actor, when Ray Data starts the actor (before its first batch: a model loads before the pool counts as up), or once
  per batch for a task stage — never on the driver, which builds a stage only to read its resources and wire it.
- ``process(row)`` — one input row → its task, or its list of tasks (plan). It never raises for a bad input: the
  task becomes ``failed`` (:mod:`pipelines.batch.stages`); an exception out of it is a bug and stops the run.

The base converts Arrow once, in :meth:`Stage.__call__` (one ``pa.Table`` block in, one out; Ray Data gives one row
per batch, ``batch_size=1``), and :func:`add_stage` is the only ``map_batches`` of the pipeline. A stage runs
in-process too (tests): ``stage = PrepareStage(cfg); stage(table)`` sets it up on its first batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

import pyarrow as pa

from pipelines.batch.config import RunConfig
from pipelines.batch.tasks import WindowTask, rows_from_table, tasks_to_table

BATCH = {"batch_size": 1, "batch_format": "pyarrow"}  # one row per call: a request (plan) or a window


@dataclass(frozen=True)
class Workers:
    """Where a stage runs and what each of its workers asks Ray for."""

    num_cpus: float
    num_gpus: float = 0.0
    memory: Optional[int] = None  # bytes (for the scheduler and an autoscaler); None: not declared
    resources: tuple[tuple[str, float], ...] = ()  # custom Ray resources, e.g. (("edit_node", 1.0),)
    actors: Optional[int] = None  # a pool of (at most) this many actors; None: a Ray task per batch
    # the pool's least size: None: the run's rule (StageResources.pool: 1 on an autoscaling cluster, else actors)
    min_actors: Optional[int] = None


class Stage:
    """The base of a stage: see the module docstring. ``in_actor``: True only where Ray Data constructs the stage
    in its actor (:meth:`map_batches_args`): :meth:`setup` runs there and then."""

    row_type: ClassVar[type] = WindowTask

    def __init__(self, cfg: RunConfig, *, in_actor: bool = False) -> None:
        self.cfg = cfg
        self.ready = False
        if in_actor:
            self.setup()
            self.ready = True

    def workers(self) -> Workers:
        raise NotImplementedError

    def setup(self) -> None:
        """Per-worker state; nothing by default."""

    def process(self, row: Any) -> Union[WindowTask, list[WindowTask]]:
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not self.ready:  # a task stage, or a stage run in-process
            self.setup()
            self.ready = True
        out: list[WindowTask] = []
        for row in rows_from_table(self.row_type, batch):
            done = self.process(row)
            out.extend(done if isinstance(done, list) else [done])
        return tasks_to_table(out)

    def map_batches_args(self) -> dict[str, Any]:
        """The ``Dataset.map_batches`` arguments of this stage: an actor stage as its class, built in each actor
        with this stage's config; a task stage as this (not yet set up) instance, shipped with each task."""
        import ray.data

        w = self.workers()
        args: dict[str, Any] = dict(BATCH, num_cpus=w.num_cpus, num_gpus=w.num_gpus or None, memory=w.memory,
                                    resources=dict(w.resources) or None)
        if w.actors is None:
            return dict(fn=self, **args)
        lo, start, hi = self.pool_size(w)
        pool = (ray.data.ActorPoolStrategy(size=hi) if lo == hi else
                ray.data.ActorPoolStrategy(min_size=lo, max_size=hi, initial_size=start))
        return dict(fn=type(self), fn_constructor_kwargs={"cfg": self.cfg, "in_actor": True}, compute=pool, **args)

    def pool_size(self, w: Workers) -> tuple[int, int, int]:
        """``(min, initial, max)`` actors of this stage's pool: ``w.actors`` at most and at the start; at least
        ``w.min_actors`` where given, else the run's rule (:meth:`~pipelines.batch.config.StageResources.pool`: 1 on
        an autoscaling cluster, fixed on a static one)."""
        lo, start, hi = self.cfg.resources.pool(w.actors or 1)
        if w.min_actors is not None:
            lo = w.min_actors
        return max(1, min(lo, hi)), start, hi


def add_stage(ds: Any, stage: Stage) -> Any:
    """``ds`` (a ``ray.data.Dataset``) followed by ``stage``."""
    return ds.map_batches(**stage.map_batches_args())
