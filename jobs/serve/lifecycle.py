"""What happens to an edit when something fails or the service restarts: :class:`EditLifecycle`, the part of the
``EditAPI`` replica (:mod:`jobs.serve.api`) that fails edits, keeps the replica's owner lease and adopts orphans.

Failures: when the worker call fails (the worker process died, a storage error in the worker), the edit fails with
the reason and everything of it but its state is removed at once. A failure that storage does not take (the root
is read-only for a while) is kept in this replica, reported by the status route from there and written again on
every lease beat until it is.

Restarts: every edit this replica accepts carries its owner id, and a lease keeper renews the replica's lease
(:mod:`jobs.serve.store`). Once started, the keeper takes over the orphans (:func:`jobs.serve.sweep.find_orphans`:
queued or running edits whose owner is gone, e.g. a previous ``mf serve``): the whole root at once, then those of
other replicas whose lease lapses later. An orphan is re-queued (:meth:`EditLifecycle.adopt`) when its token is still
accepted, it was not re-queued before (:data:`MAX_RESTARTS`), the queue has room, and its inputs are still there and
pass the current limits and caps; it then resumes from the windows it had finished. Any other orphan fails with the
reason (``the service restarted before this edit finished; ...``) and its files go.

The mixin uses the replica's ``store``, ``cfg``, ``tokens``, ``owner``, ``sweeper``, ``active`` (edit id → namespace
of the edits holding a queue slot), ``ended``, ``watched``, ``_scanned``, ``_keeping`` and its ``start`` method.
"""
import asyncio
import logging
import time
from typing import Any, Optional

from fastapi import HTTPException
from ray.exceptions import RayActorError
from starlette.datastructures import FormData

from jobs.serve.inputs import (
    LABELS,
    REQUEST_FIELDS,
    check_cost,
    check_limits,
    parse_edit,
    resolve_allowed,
    scrub,
    with_inputs,
)
from jobs.serve.store import LEASE_BEAT_S, EditState, is_active, state_of
from jobs.serve.sweep import edit_names, find_orphans
from pipelines.batch.cancel import Cancelled
from pipelines.batch.requests import Request
from pipelines.media import storage

log = logging.getLogger("mf.serve")

MAX_RESTARTS = 1  # an orphan is re-queued at most this often (an edit that keeps taking the service down ends)
RESTARTED = "the service restarted before this edit finished"


def worker_failure(exc: BaseException, *secrets_: str) -> str:
    """The reason of an edit whose worker call failed (no server path, nor any of ``secrets_``)."""
    if isinstance(exc, RayActorError):
        return f"the edit worker died while running this edit ({type(exc).__name__})"
    cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the worker's own exception
    kind = "storage error" if isinstance(cause, OSError) else "the edit failed in the worker"
    first = (str(cause).strip().splitlines() or [""])[0][:300]
    return scrub(f"{kind}: {type(cause).__name__}: {first}", *secrets_)


class EditLifecycle:
    """Failures, the owner lease and orphans of an ``EditAPI`` replica (see the module docstring)."""

    # -- failures ------------------------------------------------------------------------------------------------
    async def end_failed(self, ns: str, edit_id: str, reason: str) -> None:
        """Fail the edit with ``reason`` and remove all its files but its state; held here (and reported) until
        storage takes it."""
        self.ended[edit_id] = (ns, {"state": EditState.FAILED, "error": reason, "finished_at": time.time()})
        await self.write_ended(edit_id)

    async def write_ended(self, edit_id: str) -> None:
        ns, failure = self.ended[edit_id]
        try:
            await asyncio.to_thread(self._persist_failure, ns, edit_id, failure)
        except Exception as exc:  # noqa: BLE001 - kept, written again on the next lease beat
            log.warning("edit %s: its failure is not written yet (%s: %s)", edit_id, type(exc).__name__, exc)
            return
        self.ended.pop(edit_id, None)

    def _persist_failure(self, ns: str, edit_id: str, failure: dict) -> None:
        """The failure into the edit's state unless it ended otherwise (a failure the worker wrote keeps its
        reason); a failed edit's files go."""
        try:
            cur = self.store.read(ns, edit_id)
            if is_active(cur):
                cur = self.store.write(ns, edit_id, {**cur, **failure})
        except Cancelled:  # deleted meanwhile
            return
        if state_of(cur) is EditState.FAILED:
            self.store.remove_files(ns, edit_id)

    # -- the lease keeper and orphans ------------------------------------------------------------------------------
    def _start_keeping(self) -> None:
        """Start the lease keeper on the replica's event loop (at construction: Serve builds the replica on it)."""
        if self._keeping is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # built outside an event loop (a test of its metrics): the first request starts it
                return
            self._keeping = loop.create_task(self._keep_forever())

    async def _keep_forever(self) -> None:
        """Every :data:`LEASE_BEAT_S`: renew the lease, write the failures storage has not taken, adopt orphans."""
        while True:
            for step in (self._beat, self._write_all_ended, self._adopt_orphans):
                try:
                    await step()
                except Exception:  # noqa: BLE001 - the keeper lives on (storage may be back next beat)
                    log.exception("lease keeper: %s failed", step.__name__)
            await asyncio.sleep(LEASE_BEAT_S)

    async def _beat(self) -> None:
        await asyncio.to_thread(self.store.beat, self.owner)

    async def _write_all_ended(self) -> None:
        for edit_id in list(self.ended):
            await self.write_ended(edit_id)

    async def _adopt_orphans(self) -> None:
        """The orphans of the whole root (the first time), then of the other replicas' edits seen since."""
        names = None if not self._scanned else self.watched | self.sweeper.take_foreign()
        orphans, self.watched = await asyncio.to_thread(
            find_orphans, self.store, self.owner, edit_names(self.store) if names is None else names)
        self._scanned = True
        for ns, edit_id, state in orphans:
            try:
                await self.adopt(ns, edit_id, state)
            except Exception:  # noqa: BLE001 - looked at again on the next beat
                log.exception("edit %s: taking it over failed", edit_id)
                self.active.pop(edit_id, None)
                self.watched.add((ns, edit_id))

    async def adopt(self, ns: str, edit_id: str, state: dict) -> None:
        """Take over an orphan: re-queue it when it can be (see the module docstring), else fail it with why not."""
        why = self._no_requeue(ns, state)
        if why is None:
            why = await self._requeue(ns, edit_id, state)
        if why:
            log.info("edit %s: failed after a restart (%s)", edit_id, why)
            await self.end_failed(ns, edit_id, f"{RESTARTED}; it was not re-queued: {why}")

    async def _requeue(self, ns: str, edit_id: str, state: dict) -> Optional[str]:
        """Re-queue an orphan: None once its worker task is started, else why not ("" when it was deleted)."""
        self.active[edit_id] = ns  # its queue slot, held while its inputs are checked again
        try:
            req = await asyncio.to_thread(self._recheck, ns, edit_id, state)
            await asyncio.to_thread(self._requeued, ns, edit_id, state)
        except HTTPException as exc:
            self.active.pop(edit_id, None)
            return str(exc.detail)
        except Cancelled:  # deleted meanwhile
            self.active.pop(edit_id, None)
            return ""
        log.info("edit %s: re-queued after a restart", edit_id)
        self.start(ns, edit_id, req)
        return None

    def _no_requeue(self, ns: str, state: dict) -> Optional[str]:
        """Why an orphan cannot be re-queued, as far as its state and the queue tell; None when it may be."""
        if ns not in self.tokens:
            return "its token is no longer accepted"
        if int(state.get("restarts") or 0) >= MAX_RESTARTS:
            return "it was re-queued after a restart already"
        if not isinstance(state.get("params"), dict) or not isinstance(state.get("inputs"), dict):
            return "its request was not recorded"
        if len(self.active) >= self.cfg.queue_size or \
                sum(1 for owner in self.active.values() if owner == ns) >= self.cfg.max_queued_per_token:
            return "the queue had no room for it"
        return None

    def _recheck(self, ns: str, edit_id: str, state: dict) -> Request:
        """The orphan's request, checked again as a new edit is (current caps, limits, allow-list); the
        :class:`HTTPException` of the first check it fails."""
        edit_dir = self.store.edit_dir(ns, edit_id)
        params = state["params"]
        form = FormData([(k, str(params[k])) for k in REQUEST_FIELDS if params.get(k) is not None])
        req = parse_edit(form, edit_id, edit_dir, self.cfg)
        inputs = {label: state["inputs"].get(label) for label in LABELS}
        frames = {label: self._recheck_input(inputs[label], label, edit_dir) for label in LABELS}
        req = with_inputs(req, inputs)
        check_cost(req, frames["source"], self.cfg)
        return req

    def _recheck_input(self, uri: Any, label: str, edit_dir: str) -> int:
        if not isinstance(uri, str) or not uri:
            raise HTTPException(422, f"{label}: not recorded")
        upload = uri.startswith(storage.join(edit_dir, "inputs") + "/")
        if not upload and resolve_allowed(uri, self.cfg.allowed_prefixes) is None:
            raise HTTPException(403, f"{label}_uri is outside the allowed storage prefixes")
        if not storage.exists(uri):
            raise HTTPException(422, f"{label}: its input is gone")
        return check_limits(uri, label, self.cfg)

    def _requeued(self, ns: str, edit_id: str, state: dict) -> None:
        self.store.write(ns, edit_id, {**state, "state": EditState.QUEUED, "owner": self.owner, "error": None,
                                       "started_at": None, "restarts": int(state.get("restarts") or 0) + 1})
