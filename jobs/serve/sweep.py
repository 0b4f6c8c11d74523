"""Expiry of the Serve app's files, and the edits whose replica is gone.

:class:`Sweeper` removes, ``retention_s`` after they ended, the folders of finished, failed and cancelled edits
(inputs and outputs), the leftovers of deleted edits, old tombstones and old leases of API replicas.

Work per pass is bounded: one pass looks at no more than ``budget`` entries and carries on from there the next
time (a walk over ``edits/<ns>/<id>`` and ``tombstones/<ns>/<id>`` that starts over once it is through). An API
replica runs a pass every ``sweep_interval_s`` in a thread; several replicas sweeping the same root is harmless.
An edit still queued or running whose state has not changed for ``retention_s`` is treated as lost (its replica
died): it gets a tombstone first, so a worker still on it stops writing.

Orphans (:func:`find_orphans`): edits queued or running whose owner (the API replica that accepted them, see
:mod:`jobs.serve.store`) holds no live lease: that replica, and the run it handed to a worker, are gone. An API
replica looks for them over the whole root once it starts (:func:`edit_names`), then among the edits of other live
replicas it saw (their lease may lapse later) and those the sweep passes (:meth:`Sweeper.take_foreign`); it re-queues
or fails them (:mod:`jobs.serve.api`).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Optional

from jobs.serve.store import OWNER_RE, StateStore, is_active, valid_edit_id
from pipelines.media import storage

log = logging.getLogger("mf.serve")

SWEEP_BUDGET = 200  # entries looked at per pass
MAX_FOREIGN = 10 * SWEEP_BUDGET  # active edits of other owners remembered between two looks


def _listdir(uri: str) -> list[str]:
    """Names in a folder, listed afresh and not left in the filesystem's listing cache (s3fs keeps listings
    forever, which would hide new edits from the sweep and new tombstones from this process's checks)."""
    fs, path = storage.open_fs(uri)
    fs.invalidate_cache(path)
    try:
        return storage.listdir(uri)
    finally:
        fs.invalidate_cache(path)


def edit_names(store: StateStore) -> Iterator[tuple[str, str]]:
    """``(namespace, id)`` of every edit folder under the root (a full walk)."""
    top = storage.join(store.root, "edits")
    for ns in _listdir(top):
        for edit_id in _listdir(storage.join(top, ns)):
            if valid_edit_id(edit_id):
                yield ns, edit_id


def find_orphans(store: StateStore, me: str, names: Iterable[tuple[str, str]], now: Optional[float] = None
                 ) -> tuple[list[tuple[str, str, dict]], set[tuple[str, str]]]:
    """Of the edits ``names``: the orphans (queued or running, their owner neither ``me`` nor alive) as ``(ns, id,
    state)``, oldest first, and the active edits of other live owners (to look at again later)."""
    orphans, others, alive = [], set(), {}
    for ns, edit_id in names:
        try:
            state = store.read(ns, edit_id)
        except ValueError:  # not an edit folder of ours
            continue
        if not is_active(state) or state.get("owner") == me:
            continue
        owner = state.get("owner")
        if owner not in alive:
            alive[owner] = store.alive(owner, now)
        if alive[owner]:
            others.add((ns, edit_id))
        else:
            orphans.append((ns, edit_id, state))
    orphans.sort(key=lambda o: float(o[2].get("created_at") or 0.0))
    return orphans, others


class Sweeper:
    def __init__(self, store: StateStore, retention_s: float, budget: int = SWEEP_BUDGET, owner: str = ""):
        self.store, self.retention_s, self.budget, self.owner = store, retention_s, budget, owner
        self._walk: Optional[Iterator[tuple[str, str, str]]] = None
        self._suspects: set[tuple[str, str]] = set()  # edit folders seen without a state (removed if seen again)
        self._foreign: set[tuple[str, str]] = set()  # active edits of other owners seen (see take_foreign)
        self._lock = threading.Lock()

    def take_foreign(self) -> set[tuple[str, str]]:
        """The active edits of other owners the sweep passed since the last call."""
        with self._lock:
            taken, self._foreign = self._foreign, set()
        return taken

    def _entries(self) -> Iterator[tuple[str, str, str]]:
        for kind in ("edits", "tombstones"):
            top = storage.join(self.store.root, kind)
            for ns in _listdir(top):
                for edit_id in _listdir(storage.join(top, ns)):
                    if valid_edit_id(edit_id):
                        yield kind, ns, edit_id

    def run_once(self, now: Optional[float] = None) -> int:
        """One bounded pass; returns the number of edit folders and tombstones removed."""
        now = time.time() if now is None else now
        if self._walk is None:
            self._expire_leases(now)
            self._walk = self._entries()
        removed = 0
        for _ in range(self.budget):
            try:
                kind, ns, edit_id = next(self._walk)
            except StopIteration:
                self._walk = None
                break
            try:
                removed += self._tombstone(ns, edit_id, now) if kind == "tombstones" else self._edit(ns, edit_id, now)
            except Exception:  # noqa: BLE001 - one bad entry must not stop the sweep
                log.exception("sweep: %s entry failed", kind)
        return removed

    def _expired(self, stamp: object, now: float) -> bool:
        return isinstance(stamp, (int, float)) and now - float(stamp) > self.retention_s

    def _edit(self, ns: str, edit_id: str, now: float) -> int:
        if self.store.buried(ns, edit_id):  # a write that raced a delete left something behind
            self.store.remove(ns, edit_id)
            return 1
        state = self.store.read(ns, edit_id)
        if state is None:  # the state is an edit's first file: a folder without one is debris (or just starting)
            if (ns, edit_id) in self._suspects:
                self._suspects.discard((ns, edit_id))
                self.store.remove(ns, edit_id)
                return 1
            if len(self._suspects) < 10 * self.budget:
                self._suspects.add((ns, edit_id))
            return 0
        self._suspects.discard((ns, edit_id))
        if is_active(state) and state.get("owner") != self.owner:
            with self._lock:
                if len(self._foreign) < MAX_FOREIGN:
                    self._foreign.add((ns, edit_id))
        if not self._expired(state.get("updated_at", state.get("created_at")), now):
            return 0
        if is_active(state):
            self.store.bury(ns, edit_id)
        else:
            self.store.remove(ns, edit_id)
        return 1

    def _expire_leases(self, now: float) -> None:
        """Remove the leases of replicas gone for longer than the retention (a missing lease reads as dead too)."""
        top = storage.join(self.store.root, "owners")
        try:
            for owner in _listdir(top):
                if OWNER_RE.match(owner) and not self._alive_within(owner, now):
                    storage.remove(self.store.lease(owner))
        except Exception:  # noqa: BLE001 - the sweep of the edits goes on
            log.exception("sweep: leases failed")

    def _alive_within(self, owner: str, now: float) -> bool:
        beat = self.store.lease_beat(owner)
        return beat is not None and not self._expired(beat, now)

    def _tombstone(self, ns: str, edit_id: str, now: float) -> int:
        uri = self.store.tombstone(ns, edit_id)
        try:
            deleted_at = json.loads(storage.read_bytes(uri)).get("deleted_at")
        except (FileNotFoundError, ValueError, AttributeError):
            deleted_at = 0.0  # unreadable: old enough
        if not self._expired(deleted_at, now):
            return 0
        self.store.remove(ns, edit_id)
        storage.remove(uri)
        return 1
