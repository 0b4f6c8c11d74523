"""The model replicas of the Serve app: :class:`EditWorker` holds the model and runs one edit at a time through the
batch pipeline's own per-request code (:func:`pipelines.batch.single.edit_request`), writing the edit's state.

Cancellation stops the work: the pipeline gets a ``cancel`` callable (:class:`CancelCheck`, true once the edit has
a tombstone) that it checks between sampler steps and before every write. Whatever stops a run (that check, a store
write on a deleted edit, a progress write on an edit that ended elsewhere) raises the one cancellation type,
:class:`~pipelines.batch.cancel.Cancelled`, and :meth:`EditWorker.run` returns None. Once the run has stopped,
anything a write that raced the delete left in the edit's folder is removed, so the replica is free for the next
edit within about one sampler step of a DELETE and a deleted edit leaves no files.

A run starts only for an edit still queued or running (one the API has not failed or finished meanwhile) whose inputs
still pass the limits and the cost cap (checked again here: a storage URI may have been rewritten since the API
checked it), and stops at its next progress write once the edit has ended elsewhere. A failed edit leaves only its
state: its uploads, windows and partial outputs are removed at once. A storage error (a state write failing, an
output that cannot be written) fails the edit with the reason; where even that state cannot be written, the error
reaches the API replica, which keeps the failure and writes it later (:mod:`jobs.serve.api`).
"""
import logging
import time
from typing import Any, Optional

from fastapi import HTTPException
from ray import serve

from jobs.serve.config import ServeConfig
from jobs.serve.inputs import check_inputs, scrub
from jobs.serve.store import EditState, StateStore, edit_state_of, is_active, state_of
from pipelines.batch.cancel import Cancelled
from pipelines.batch.config import RunConfig, RunOptions
from pipelines.batch.identity import model_key
from pipelines.batch.requests import Request
from pipelines.batch.results import ResultRow
from pipelines.batch.single import edit_request
from pipelines.batch.status import FAILED

log = logging.getLogger("mf.serve")

PROGRESS_INTERVAL_S = 0.5  # at most one progress write per interval (the last window is always written)
CANCEL_CHECK_S = 0.2  # the tombstone is looked up at most this often while an edit runs


class CancelCheck:
    """The pipeline's ``cancel`` callable: True once the edit has a tombstone (looked up at most every
    :data:`CANCEL_CHECK_S`; once true, always true)."""

    def __init__(self, store: StateStore, ns: str, edit_id: str, interval_s: float = CANCEL_CHECK_S):
        self.store, self.ns, self.edit_id, self.interval_s = store, ns, edit_id, interval_s
        self._hit = False
        self._checked = float("-inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._hit and now - self._checked >= self.interval_s:
            self._checked = now
            self._hit = self.store.buried(self.ns, self.edit_id)
        return self._hit


class ProgressWriter:
    """The ``progress`` callback of :func:`edit_request`: the share of edited windows into the edit's state."""

    def __init__(self, store: StateStore, ns: str, edit_id: str):
        self.store, self.ns, self.edit_id = store, ns, edit_id
        self._last = 0.0

    def __call__(self, kind: str, done: int, total: int) -> None:
        if kind != "window":
            return
        now = time.monotonic()
        if now - self._last < PROGRESS_INTERVAL_S and done < total:
            return
        self._last = now
        cur = self.store.read(self.ns, self.edit_id)
        if not is_active(cur):  # deleted, or ended elsewhere (the API failed it): nothing more is written
            raise Cancelled(f"edit {self.edit_id} was deleted or ended elsewhere")
        self.store.write(self.ns, self.edit_id, {**cur, "progress": round(done / max(total, 1), 3)})


@serve.deployment(name="EditWorker", max_ongoing_requests=1, max_queued_requests=-1)
class EditWorker:
    """Holds the model (device and dtype from the replica's GPU share); :meth:`run` edits one request."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.store = StateStore(cfg.root)
        # the replica's run options; each edit's config (RunConfig.build) differs from the others in its out only
        self.options = RunOptions(weights=cfg.weights, preset=cfg.preset, dtype=cfg.dtype,
                                  gpus_per_actor=cfg.gpus_per_replica)
        self.spec = RunConfig.build(self.options, manifest="", out="").model
        self.model = self.spec.load()
        self.model_key = model_key(self.spec)

    def run(self, ns: str, edit_id: str, request: dict[str, Any]) -> Optional[ResultRow]:
        """Edit a queued request into its edit folder; returns the result row written into the edit's state, or
        None when this call did not (or no longer) run the edit: it was deleted before or while it ran (a
        :class:`~pipelines.batch.cancel.Cancelled` from the pipeline or the store stops it), or ended elsewhere.
        A crash fails the edit, not the replica."""
        try:
            return self._run(ns, edit_id, request)
        except Cancelled:
            return None
        finally:
            self._clean_up(ns, edit_id)

    def _clean_up(self, ns: str, edit_id: str) -> None:
        """Once a run has stopped: take back writes that raced a delete; a failed edit keeps only its state."""
        if self.store.buried(ns, edit_id):
            self.store.remove(ns, edit_id)
        elif state_of(self.store.read(ns, edit_id)) is EditState.FAILED:
            self.store.remove_files(ns, edit_id)

    def _run(self, ns: str, edit_id: str, request: dict[str, Any]) -> Optional[ResultRow]:
        cancel = CancelCheck(self.store, ns, edit_id)
        cur = None if cancel() else self.store.read(ns, edit_id)
        if not is_active(cur):  # deleted, or ended meanwhile: not run (again)
            return None
        req = Request(**request)
        refused = self._recheck(req)
        if refused:  # the inputs changed since they were accepted (a storage URI rewritten), or the caps did
            return self._finish(ns, edit_id, ResultRow(req.request_id, FAILED, error=refused))
        self.store.update(ns, edit_id, state=EditState.RUNNING, started_at=time.time())
        run_cfg = RunConfig.build(self.options, manifest="", out=self.store.edit_dir(ns, edit_id))
        try:
            row = edit_request(req, run_cfg, self.model, progress=ProgressWriter(self.store, ns, edit_id),
                               model_key=self.model_key, cancel=cancel)
        except Cancelled:  # deleted (the pipeline's cancel check, or a store write): run() returns None
            raise
        except Exception as exc:  # noqa: BLE001 - the edit fails, the replica lives on
            log.exception("edit %s crashed", edit_id)
            row = ResultRow(req.request_id, FAILED, error=f"{type(exc).__name__}: {exc}")
        return self._finish(ns, edit_id, row)

    def _recheck(self, req: Request) -> Optional[str]:
        """The inputs' limits and the edit's cost, checked again as the API checked them (the probe is cached by
        content, so an unchanged input costs a lookup): why not to run it, or None."""
        try:
            check_inputs(req, self.cfg)
        except HTTPException as exc:
            return f"not run: {exc.detail}"
        return None

    def _finish(self, ns: str, edit_id: str, row: ResultRow) -> Optional[ResultRow]:
        """The result row into the edit's state (the edit's state is :func:`~jobs.serve.store.edit_state_of` the
        row's status), unless the edit was deleted or ended meanwhile (then None)."""
        cur = self.store.read(ns, edit_id)
        if not is_active(cur):
            return None
        state = edit_state_of(row.status)
        ok = state is EditState.SUCCEEDED
        error: Optional[str] = None if ok else scrub(str(row.error), ns, self.store.root)
        self.store.write(ns, edit_id, {
            **cur, "state": state, "progress": 1.0 if ok else cur.get("progress", 0.0),
            "error": error, "output": row.output_uri,
            "frames": row.frames, "fps": row.fps, "finished_at": time.time()})
        return row
