"""Where the Serve app keeps edits: one folder per edit under the caller's namespace, state as atomic JSON, and a
tombstone per deleted edit.

Layout under the storage root::

    edits/<namespace>/<id>/state.json       the edit's state (the first file written for an edit)
    edits/<namespace>/<id>/inputs/          its uploads, stored as source.<ext> / driving.<ext>
    edits/<namespace>/<id>/result.mp4       ... and everything the pipeline writes
    tombstones/<namespace>/<id>             written by DELETE *before* the edit folder is removed
    owners/<owner>                          the lease of a live API replica: ``{"beat": <time>}``

A tombstone is final: every writer checks it before writing (:meth:`StateStore.write` raises
:class:`~pipelines.batch.cancel.Cancelled`, the one cancellation type; the worker's ``cancel`` callable makes the
pipeline raise it too), and a write that raced past the check is removed again by
:meth:`StateStore.write` itself or by the worker's clean-up once its run ends, so a deleted edit leaves no files.

Each API replica has an owner id (:func:`new_owner_id`), written into the state of every edit it accepts or takes
over, and renews its lease every :data:`LEASE_BEAT_S`; a lease not renewed for :data:`LEASE_TTL_S` (or missing)
means its replica is gone, and so is whoever ran that owner's queued and running edits (they are orphans: see
:mod:`jobs.serve.sweep`).

States: :class:`EditState` is the one vocabulary of an edit's ``state`` (stored in ``state.json``, answered by the
status route as the same strings), and :func:`edit_state_of` the one mapping from a result row's status
(:data:`pipelines.batch.results.STATUSES`) to it; nothing else in the Serve app translates a status.
"""
import hashlib
import json
import re
import secrets
import time
from enum import Enum
from typing import Any, Optional

from pipelines.batch.cancel import Cancelled
from pipelines.batch.status import FAILED, SKIPPED, SUCCEEDED
from pipelines.media import storage


class EditState(str, Enum):
    """The state of an edit. A ``str``: stored in ``state.json``, compared with what is read back and answered by the
    status route as its value (``"queued"``, ...), so clients see the same strings as ever."""

    QUEUED = "queued"  # accepted, waiting for a worker replica
    RUNNING = "running"  # a worker replica edits it
    SUCCEEDED = "succeeded"  # its video is there (edited now, or found finished by an earlier run)
    FAILED = "failed"  # ended with the reason in ``error``; only its state is kept
    CANCELLED = "cancelled"  # deleted while queued or running: its state goes too (404), a stored one reads as ended

    def __str__(self) -> str:
        return self.value


ACTIVE_STATES = (EditState.QUEUED, EditState.RUNNING)

# The one mapping of a result row's status (each of pipelines.batch.results.STATUSES, which names no constants) to
# its edit's state; a skipped row is one an earlier run finished (its output and done marker are there): succeeded.
ROW_STATES = {SUCCEEDED: EditState.SUCCEEDED, SKIPPED: EditState.SUCCEEDED, FAILED: EditState.FAILED}

# ids of edits (``secrets.token_urlsafe``): checked on every route before storage is touched
EDIT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
OWNER_RE = re.compile(r"^[0-9a-f]{16}$")
STATE_FILE = "state.json"
LEASE_BEAT_S = 5.0  # an API replica renews its lease this often
LEASE_TTL_S = 30.0  # a lease not renewed for this long is dead


def new_owner_id() -> str:
    return secrets.token_hex(8)


def namespace(token: str) -> str:
    """A token's namespace: its edits live under ``<root>/edits/<namespace>/`` (one client cannot see another's)."""
    return hashlib.sha256(token.encode()).hexdigest()[:20]


def valid_edit_id(edit_id: str) -> bool:
    return bool(EDIT_ID_RE.match(edit_id))


def edit_state_of(row_status: str) -> EditState:
    """The state of an edit whose run gave a result row with status ``row_status``: succeeded for ``succeeded`` and
    ``skipped``, failed for ``failed`` (and anything else)."""
    return ROW_STATES.get(row_status, EditState.FAILED)


def state_of(state: Optional[dict[str, Any]]) -> Optional[EditState]:
    """The :class:`EditState` of an edit's state document; None without one (deleted, or none) or for a value that
    is none of them."""
    try:
        return None if state is None else EditState(state.get("state"))
    except ValueError:
        return None


def is_active(state: Optional[dict[str, Any]]) -> bool:
    """The edit is queued or running."""
    return state_of(state) in ACTIVE_STATES


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
        uri = storage.join(self.edit_dir(ns, edit_id), STATE_FILE)
        if self.buried(ns, edit_id) or not storage.exists(uri):
            return None
        try:
            return json.loads(storage.read_bytes(uri))
        except FileNotFoundError:  # deleted meanwhile
            return None

    def write(self, ns: str, edit_id: str, state: dict) -> dict:
        """Write the edit's state; :class:`~pipelines.batch.cancel.Cancelled` (and nothing left behind) once the edit
        has a tombstone."""
        if self.buried(ns, edit_id):
            raise Cancelled(f"edit {edit_id} was deleted")
        state = {**state, "updated_at": time.time()}
        storage.atomic_write_text(storage.join(self.edit_dir(ns, edit_id), STATE_FILE), json.dumps(state))
        if self.buried(ns, edit_id):  # the delete raced past the check above: take the write back
            self.remove(ns, edit_id)
            raise Cancelled(f"edit {edit_id} was deleted")
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

    def remove_files(self, ns: str, edit_id: str) -> None:
        """Remove everything of the edit but its state (a failed edit: uploads, windows, partial outputs)."""
        edit_dir = self.edit_dir(ns, edit_id)
        for name in storage.listdir(edit_dir):
            if name != STATE_FILE:
                self.remove_uri(storage.join(edit_dir, name))

    # -- leases of the API replicas ------------------------------------------------------------------------------
    def lease(self, owner: str) -> str:
        if not OWNER_RE.match(owner):
            raise ValueError("invalid owner id")
        return storage.join(self.root, "owners", owner)

    def beat(self, owner: str) -> None:
        """Renew ``owner``'s lease."""
        storage.atomic_write_text(self.lease(owner), json.dumps({"beat": time.time()}))

    def lease_beat(self, owner: str) -> Optional[float]:
        """When ``owner`` last renewed its lease; None without a (readable) lease."""
        try:
            beat = json.loads(storage.read_bytes(self.lease(owner))).get("beat")
        except (FileNotFoundError, ValueError, AttributeError):
            return None
        return float(beat) if isinstance(beat, (int, float)) else None

    def alive(self, owner: Any, now: Optional[float] = None) -> bool:
        """``owner`` is a live API replica: a valid id whose lease was renewed within :data:`LEASE_TTL_S`."""
        if not isinstance(owner, str) or not OWNER_RE.match(owner):
            return False
        beat = self.lease_beat(owner)
        return beat is not None and (time.time() if now is None else now) - beat <= LEASE_TTL_S

    def drop_lease(self, owner: str) -> None:
        storage.remove(self.lease(owner))

    @staticmethod
    def remove_uri(uri: str) -> None:
        fs, path = storage.open_fs(uri)
        try:
            if fs.exists(path):
                fs.rm(path, recursive=True)
        except FileNotFoundError:  # removed meanwhile (another replica's sweep, a concurrent delete)
            pass
