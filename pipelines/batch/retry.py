"""The bound on a window's attempts when its edit actor dies: ours, on top of Ray Data's restarts.

Ray Data's actor pool restarts a dead actor and resubmits its window without limit (``max_restarts=-1,
max_task_retries=-1``; see :mod:`pipelines.batch.ray_stages`). :func:`bounded_attempt` bounds that per window and
run with a counter file next to the window, ``<window>.npz.attempts-<run_id>`` (:func:`attempt_counter`):

- before an attempt the counter is read (absent: 0); once it exceeds ``max_retries`` — the actor died
  ``1 + max_retries`` times on this window in this run — the window is ``failed`` (not the run), nothing is edited;
- otherwise the counter is raised by one (atomically), the window is edited, and the counter removed;
- a counter that cannot be read or written fails the window with the reason; one that cannot be removed is only
  logged (it bounds this run's retries only: another run has another ``run_id``).

Application errors never get here as deaths: the edit turns them into a failed task. No Ray in this module.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from pipelines.batch.status import FAILED
from pipelines.batch.tasks import WindowTask, error_text
from pipelines.media import storage

log = logging.getLogger(__name__)


def attempt_counter(task: WindowTask, run_id: str) -> str:
    """The counter file of ``task``'s attempts in run ``run_id``."""
    return f"{task.uri}.attempts-{run_id}"


def bounded_attempt(task: WindowTask, run_id: str, max_retries: int,
                    attempt: Callable[[WindowTask], WindowTask]) -> WindowTask:
    """``attempt(task)`` unless this window's actor already died ``1 + max_retries`` times in this run."""
    counter = attempt_counter(task, run_id)
    try:
        attempts = int(storage.read_bytes(counter)) if storage.exists(counter) else 0
        if attempts > max_retries:
            task.status, task.error = FAILED, (
                f"edit window {task.index}: the edit actor died {attempts} times on this window "
                f"(max_retries={max_retries})")
            return task
        storage.atomic_write_text(counter, str(attempts + 1))
    except Exception as exc:  # noqa: BLE001 - storage trouble fails this window, never the run
        return task.fail("edit", OSError(f"attempt counter {counter}: {error_text(exc)}"))
    task = attempt(task)
    try:
        storage.remove(counter)
    except Exception as exc:  # noqa: BLE001 - a leftover counter only bounds this run's retries
        log.warning("could not remove %s: %s", counter, exc)
    return task
