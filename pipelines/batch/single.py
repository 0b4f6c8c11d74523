"""One request in-process, without Ray: the batch stage functions run in order.

:func:`edit_request` calls exactly what the Ray stages call — :func:`~pipelines.batch.stages.plan_request` →
:func:`~pipelines.batch.stages.prepare_task` and :func:`~pipelines.batch.stages.edit_task` per task (a window, or
a fused request's group of windows) →
:func:`~pipelines.batch.finish.finish_request` (stitch, encode, done marker) — so a request edited here gives the same
files, ids, window cache and result row as in a batch run (a later ``mf retarget`` over the same ``out`` skips it,
and vice versa). It is meant for a process that already holds the model: the Ray Serve replica, tests, a notebook.
Any fsspec URI works for ``cfg.out`` here, ``memory://`` included (one process).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Optional

from pipelines.batch import identity
from pipelines.batch.cancel import Cancel, check_cancel
from pipelines.batch.config import RunConfig
from pipelines.batch.finish import finish_request, skipped_row
from pipelines.batch.identity import request_identity
from pipelines.batch.requests import Request
from pipelines.batch.results import ResultRow
from pipelines.batch.stages import (
    Conditioner,
    conditioner_for,
    edit_task,
    plan_request,
    prepare_task,
)

log = logging.getLogger(__name__)

# (stage, done, total): "window" per edited task (a window; a group of windows in fused mode), "request" at the end
Progress = Callable[[str, int, int], None]


def edit_request(request: Request, cfg: RunConfig, model: Any, progress: Optional[Progress] = None,
                 conditioner: Optional[Conditioner] = None, model_key: Optional[str] = None,
                 cancel: Optional[Cancel] = None) -> ResultRow:
    """Edit one request with ``model`` (an ``mf_model`` model loaded from ``cfg.model``) and return its result row
    (a :class:`~pipelines.batch.results.ResultRow`). Never raises for a bad input: the row says ``failed`` and
    why. ``model_key``: :func:`pipelines.batch.identity.model_key` of ``cfg.model``, when the caller has it (the
    request's key adds its edit parameters, ``cfg.processing``'s output options and the inputs' contents).
    ``cancel``: checked before each stage (so between a fused request's groups), between the sampler's steps (every
    window's step of a fused group, through ``edit_fused``'s ``progress``) and before every write; once it returns True,
    :class:`~pipelines.batch.cancel.Cancelled` is raised and nothing more is written."""
    t0 = time.perf_counter()
    ident = request_identity(request, model_key or identity.model_key(cfg.model), cfg.processing)
    done = skipped_row(request, ident, cfg)
    if done is not None:
        return done
    cond = conditioner or conditioner_for(cfg)
    model_identity = model.identity()
    tasks = plan_request(request, ident, cfg, cond)
    if not tasks[0].plan_failed:
        for i, task in enumerate(tasks):
            check_cancel(cancel)
            task = prepare_task(task, cond)
            check_cancel(cancel)
            tasks[i] = edit_task(task, model, model_identity, cfg, cancel)
            if progress:
                progress("window", i + 1, len(tasks))
    result = finish_request(tasks, cfg, cancel)
    result.seconds_total = time.perf_counter() - t0
    if progress:
        progress("request", 1, 1)
    log.info("request %s: %s%s", request.request_id, result.status, f" ({result.error})" if result.error else "")
    return result
