"""The Serve app's one state vocabulary (:class:`~jobs.serve.store.EditState`), its one mapping from result-row
statuses, the one cancellation type at the store and the worker, and one auth per POST. No server, no model."""
from __future__ import annotations

import asyncio
import inspect
import json

import pytest
from fastapi import HTTPException
from fastapi import Request as HttpRequest

from jobs.serve import ServeConfig, StateStore, namespace
from jobs.serve.store import ACTIVE_STATES, ROW_STATES, EditState, edit_state_of, is_active, state_of
from pipelines.batch.cancel import Cancelled
from pipelines.batch.status import STATUSES
from tests.jobs.test_serve import TOKEN_A

NS = namespace(TOKEN_A)
EDIT = "state-test-".ljust(24, "x")


def test_one_vocabulary_and_one_mapping_from_row_statuses():
    assert set(ROW_STATES) == set(STATUSES)  # every status a result row can have maps to an edit state
    assert edit_state_of("succeeded") is EditState.SUCCEEDED
    assert edit_state_of("skipped") is EditState.SUCCEEDED  # an earlier run finished it: its video is there
    assert edit_state_of("failed") is EditState.FAILED
    assert [s.value for s in EditState] == ["queued", "running", "succeeded", "failed", "cancelled"]
    assert ACTIVE_STATES == (EditState.QUEUED, EditState.RUNNING)
    # stored and answered as the same strings as ever
    assert json.dumps({"state": EditState.RUNNING}) == json.dumps({"state": "running"})
    assert f"edit is {EditState.FAILED}" == "edit is failed" and EditState.QUEUED == "queued"
    assert state_of({"state": "succeeded"}) is EditState.SUCCEEDED
    assert state_of(None) is None and state_of({"state": "bogus"}) is None and state_of({}) is None
    assert is_active({"state": "queued"}) and is_active({"state": "running"})
    assert not any(is_active(s) for s in (None, {}, {"state": "failed"}, {"state": "cancelled"}, {"state": [1]}))


def test_a_write_on_a_deleted_edit_raises_the_one_cancellation_type(tmp_path):
    store = StateStore(str(tmp_path))
    state = store.write(NS, EDIT, {"id": EDIT, "state": EditState.QUEUED})
    assert json.loads((tmp_path / "edits" / NS / EDIT / "state.json").read_text())["state"] == "queued"
    assert store.read(NS, EDIT)["state"] == state["state"] == "queued"
    store.bury(NS, EDIT)
    with pytest.raises(Cancelled, match=EDIT):
        store.write(NS, EDIT, {"id": EDIT, "state": EditState.RUNNING})
    assert not (tmp_path / "edits" / NS / EDIT).exists()


def _bare(deployment):
    """The class of a Serve deployment with its own ``__init__`` (below Serve's ingress wrapper)."""
    return next(c for c in deployment.func_or_class.__mro__
                if c.__module__.startswith("jobs.serve.") and "__init__" in vars(c)
                and not inspect.iscoroutinefunction(vars(c)["__init__"]))


def test_the_worker_returns_no_row_for_an_edit_it_does_not_run(tmp_path):
    """Deleted before it ran, or ended elsewhere: ``run`` returns None (no row to count), and writes nothing."""
    from jobs.serve.worker import EditWorker

    worker = object.__new__(_bare(EditWorker))
    worker.store, worker.cfg = StateStore(str(tmp_path)), ServeConfig(root=str(tmp_path), tokens=(TOKEN_A,))
    worker.store.write(NS, EDIT, {"id": EDIT, "state": EditState.QUEUED})
    worker.store.bury(NS, EDIT)
    assert worker.run(NS, EDIT, {}) is None and not (tmp_path / "edits" / NS / EDIT).exists()
    other = "ended-elsewhere".ljust(24, "y")
    worker.store.write(NS, other, {"id": other, "state": EditState.FAILED, "error": "the API failed it"})
    assert worker.run(NS, other, {}) is None
    assert worker.store.read(NS, other)["error"] == "the API failed it"


def test_one_auth_per_post(tmp_path):
    """``admit`` authenticates a new edit's POST before its body is read and leaves the namespace in the request's
    scope; the route takes it from there (it authenticates itself only where ``admit`` did not run)."""
    from jobs.serve.api import NAMESPACE_STATE, EditAPI

    api = object.__new__(_bare(EditAPI))
    _bare(EditAPI).__init__(api, None, ServeConfig(root=str(tmp_path), tokens=(TOKEN_A,)))
    calls: list[str] = []
    real_auth = api.auth
    api.auth = lambda authorization: calls.append(authorization) or real_auth(authorization)
    bearer = f"Bearer {TOKEN_A}"

    def post(admitted: bool) -> int:
        calls.clear()
        scope = {"type": "http", "method": "POST", "path": "/v1/edits", "query_string": b"",
                 "headers": [(b"authorization", bearer.encode()),
                             (b"content-type", b"application/x-www-form-urlencoded")]}
        if admitted:
            api.admit(scope).release()
            assert scope["state"][NAMESPACE_STATE] == NS
        body = [{"type": "http.request", "body": b"steps=1", "more_body": False}]

        async def receive():
            return body.pop(0) if body else {"type": "http.disconnect"}

        with pytest.raises(HTTPException) as refused:  # no inputs: refused after the auth
            asyncio.run(api.create(HttpRequest(scope, receive), authorization=bearer))
        assert refused.value.status_code == 422, refused.value.detail
        return len(calls)

    assert post(admitted=True) == 1
    assert post(admitted=False) == 1
    assert not api.active  # the refused edits hold no queue slot
