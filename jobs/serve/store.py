"""Where the Serve app keeps edits: one folder per edit under the caller's namespace, state as atomic JSON."""
import hashlib
import json
import time
from typing import Any, Optional

from pipelines.media import storage

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")


def namespace(token: str) -> str:
    """A token's namespace: its edits live under ``<root>/edits/<namespace>/`` (one client cannot see another's)."""
    return hashlib.sha256(token.encode()).hexdigest()[:20]


def is_cancelled(state: Optional[dict[str, Any]]) -> bool:
    """The edit was deleted or cancelled meanwhile."""
    return state is None or state.get("state") == "cancelled"


class StateStore:
    """Edit states as JSON documents under ``<root>/edits/<namespace>/<id>/state.json`` (atomic writes)."""

    def __init__(self, root: str):
        self.root = root

    def edit_dir(self, ns: str, edit_id: str) -> str:
        return storage.join(self.root, "edits", ns, edit_id)

    def read(self, ns: str, edit_id: str) -> Optional[dict]:
        uri = storage.join(self.edit_dir(ns, edit_id), "state.json")
        if not storage.exists(uri):
            return None
        return json.loads(storage.read_bytes(uri))

    def write(self, ns: str, edit_id: str, state: dict) -> dict:
        state = {**state, "updated_at": time.time()}
        storage.atomic_write_text(storage.join(self.edit_dir(ns, edit_id), "state.json"), json.dumps(state))
        return state

    def update(self, ns: str, edit_id: str, **changes) -> Optional[dict]:
        cur = self.read(ns, edit_id)
        if cur is None:
            return None
        return self.write(ns, edit_id, {**cur, **changes})

    def delete(self, ns: str, edit_id: str) -> None:
        fs, path = storage.open_fs(self.edit_dir(ns, edit_id))
        if fs.exists(path):
            fs.rm(path, recursive=True)
