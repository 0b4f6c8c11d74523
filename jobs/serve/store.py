"""Where the Serve app keeps edits: one folder per edit under the caller's namespace, state as atomic JSON, and a
tombstone per deleted edit.

Layout under the storage root::

    edits/<namespace>/<id>/state.json       the edit's state (the first file written for an edit)
    edits/<namespace>/<id>/inputs/          its uploads, stored as source.<ext> / driving.<ext>
    edits/<namespace>/<id>/result.mp4       ... and everything the pipeline writes
    tombstones/<namespace>/<id>             written by DELETE *before* the edit folder is removed

A tombstone is final: every writer checks it before writing (:meth:`StateStore.write` raises :class:`EditGone`; the
worker's ``cancel`` callable makes the pipeline raise), and a write that raced past the check is removed again by
:meth:`StateStore.write` itself or by the worker's clean-up once its run ends, so a deleted edit leaves no files.
"""
import hashlib
import json
import re
import time
from typing import Any, Optional

from pipelines.media import storage

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
# ids of edits (``secrets.token_urlsafe``): checked on every route before storage is touched
EDIT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def namespace(token: str) -> str:
    """A token's namespace: its edits live under ``<root>/edits/<namespace>/`` (one client cannot see another's)."""
    return hashlib.sha256(token.encode()).hexdigest()[:20]


def valid_edit_id(edit_id: str) -> bool:
    return bool(EDIT_ID_RE.match(edit_id))


def is_cancelled(state: Optional[dict[str, Any]]) -> bool:
    """The edit was deleted or cancelled meanwhile."""
    return state is None or state.get("state") == "cancelled"


class EditGone(Exception):
    """The edit was deleted (it has a tombstone): nothing more may be written for it."""


class StateStore:
    """Edit states as JSON documents under ``<root>/edits/<namespace>/<id>/state.json`` (atomic writes)."""

    def __init__(self, root: str):
        self.root = root

    def edit_dir(self, ns: str, edit_id: str) -> str:
        if not valid_edit_id(edit_id) or not re.fullmatch(r"[0-9a-f]{1,64}", ns):
            raise ValueError("invalid edit id or namespace")  # never reached from a route (checked there first)
        return storage.join(self.root, "edits", ns, edit_id)

    def tombstone(self, ns: str, edit_id: str) -> str:
        self.edit_dir(ns, edit_id)  # validates both
        return storage.join(self.root, "tombstones", ns, edit_id)

    def buried(self, ns: str, edit_id: str) -> bool:
        """The edit was deleted."""
        return storage.exists(self.tombstone(ns, edit_id))

    def read(self, ns: str, edit_id: str) -> Optional[dict]:
        """The edit's state; None for an edit that does not exist or was deleted."""
        uri = storage.join(self.edit_dir(ns, edit_id), "state.json")
        if self.buried(ns, edit_id) or not storage.exists(uri):
            return None
        try:
            return json.loads(storage.read_bytes(uri))
        except FileNotFoundError:  # deleted meanwhile
            return None

    def write(self, ns: str, edit_id: str, state: dict) -> dict:
        """Write the edit's state; :class:`EditGone` (and nothing left behind) once the edit has a tombstone."""
        if self.buried(ns, edit_id):
            raise EditGone(edit_id)
        state = {**state, "updated_at": time.time()}
        storage.atomic_write_text(storage.join(self.edit_dir(ns, edit_id), "state.json"), json.dumps(state))
        if self.buried(ns, edit_id):  # the delete raced past the check above: take the write back
            self.remove(ns, edit_id)
            raise EditGone(edit_id)
        return state

    def update(self, ns: str, edit_id: str, **changes) -> Optional[dict]:
        cur = self.read(ns, edit_id)
        if cur is None:
            return None
        return self.write(ns, edit_id, {**cur, **changes})

    def bury(self, ns: str, edit_id: str) -> None:
        """Delete an edit for good: its tombstone first (so every writer stops), then its folder."""
        storage.atomic_write_text(self.tombstone(ns, edit_id), json.dumps({"deleted_at": time.time()}))
        self.remove(ns, edit_id)

    def remove(self, ns: str, edit_id: str) -> None:
        """Remove the edit's folder (no tombstone: e.g. a refused request, or leftovers of a deleted edit)."""
        self.remove_uri(self.edit_dir(ns, edit_id))

    def remove_inputs(self, ns: str, edit_id: str) -> None:
        """Remove the edit's uploads (once it has ended)."""
        self.remove_uri(storage.join(self.edit_dir(ns, edit_id), "inputs"))

    @staticmethod
    def remove_uri(uri: str) -> None:
        fs, path = storage.open_fs(uri)
        try:
            if fs.exists(path):
                fs.rm(path, recursive=True)
        except FileNotFoundError:  # removed meanwhile (another replica's sweep, a concurrent delete)
            pass
