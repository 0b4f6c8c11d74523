"""One request in-process, without Ray Data: the stage code of :mod:`pipelines.ray_pipeline`, run in order.

``edit_request`` calls exactly the functions the Ray Data stages call — :func:`~pipelines.ray_pipeline.plan_rows`
→ :func:`~pipelines.ray_pipeline.prepare_row` per window → :func:`~pipelines.ray_pipeline.edit_row` (model edit and
atomic window write) → :func:`~pipelines.ray_pipeline.finish_request` (stitch, encode, done marker) — so a request
edited here gives the same files, IDs, window cache and result row as in a batch run (a later ``mf retarget`` over
the same ``out`` skips it, and vice versa). It is meant for a process that already holds the model: the Ray Serve
replica, tests, a notebook. Any fsspec URI works for ``cfg.out`` here, ``memory://`` included (one process).
"""
from __future__ import annotations

import importlib
import logging
import time
from typing import Any, Callable, Optional

from pipelines.manifest import Request
from pipelines.ray_pipeline import (PLAN_FAILED, RunConfig, edit_row, finish_request, plan_rows, prepare_row,
                                    skipped_row)

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total): "window" per edited window, "request" at the end


def edit_request(request: Request, cfg: RunConfig, model: Any, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Edit one request with ``model`` (an ``mf_model`` model) and return its result row (see
    :data:`pipelines.manifest.RESULT_SCHEMA`). Never raises for a bad input: the row says ``failed`` and why."""
    t0 = time.perf_counter()
    done = skipped_row(request, cfg)
    if done is not None:
        return done
    prep = importlib.import_module(cfg.prepare_module)
    identity = model.identity()
    rows = plan_rows(request, cfg, prep)
    if rows[0]["window_index"] != PLAN_FAILED:
        for i, row in enumerate(rows):
            rows[i] = edit_row(prepare_row(row, cfg, prep), model, identity, cfg)
            if progress:
                progress("window", i + 1, len(rows))
    result = finish_request(rows, cfg)
    result["seconds_total"] = time.perf_counter() - t0
    if progress:
        progress("request", 1, 1)
    log.info("request %s: %s%s", request.request_id, result["status"],
             f" ({result['error']})" if result.get("error") else "")
    return result
