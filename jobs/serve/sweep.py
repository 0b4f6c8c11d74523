"""Expiry of the Serve app's files: :class:`Sweeper` removes, ``retention_s`` after they ended, the folders of
finished, failed and cancelled edits (inputs and outputs), the leftovers of deleted edits, and old tombstones.

Work per pass is bounded: one pass looks at no more than ``budget`` entries and carries on from there the next
time (a walk over ``edits/<ns>/<id>`` and ``tombstones/<ns>/<id>`` that starts over once it is through). An API
replica runs a pass every ``sweep_interval_s`` in a thread; several replicas sweeping the same root is harmless.
An edit still queued or running whose state has not changed for ``retention_s`` is treated as lost (its replica
died): it gets a tombstone first, so a worker still on it stops writing.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Optional

from jobs.serve.store import ACTIVE_STATES, StateStore, valid_edit_id
from pipelines.media import storage

log = logging.getLogger("mf.serve")

SWEEP_BUDGET = 200  # entries looked at per pass


def _listdir(uri: str) -> list[str]:
    """Names in a folder, listed afresh and not left in the filesystem's listing cache (s3fs keeps listings
    forever, which would hide new edits from the sweep and new tombstones from this process's checks)."""
    fs, path = storage.open_fs(uri)
    fs.invalidate_cache(path)
    try:
        return storage.listdir(uri)
    finally:
        fs.invalidate_cache(path)


class Sweeper:
    def __init__(self, store: StateStore, retention_s: float, budget: int = SWEEP_BUDGET):
        self.store, self.retention_s, self.budget = store, retention_s, budget
        self._walk: Optional[Iterator[tuple[str, str, str]]] = None
        self._suspects: set[tuple[str, str]] = set()  # edit folders seen without a state (removed if seen again)

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
        if not self._expired(state.get("updated_at", state.get("created_at")), now):
            return 0
        if state.get("state") in ACTIVE_STATES:
            self.store.bury(ns, edit_id)
        else:
            self.store.remove(ns, edit_id)
        return 1

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
