"""The lifecycle of the Serve app's edits over real HTTP on 127.0.0.1 (real Ray, real model, real ffmpeg): edits a
previous process left queued or running are resolved at start-up as docs/operations.md says (re-queued, or failed
with the reason), a worker killed mid-edit fails its edit at once and leaves only its state, and ``mf serve`` sets up
its local Ray's token through ``connect_ray`` without a token file (a temporary HOME: the real ~/.ray is never
touched)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
from starlette.datastructures import FormData

from jobs.runtime import local_auth
from jobs.serve import ServeConfig, StateStore, namespace
from jobs.serve.inputs import parse_edit
from jobs.serve.store import LEASE_BEAT_S, new_owner_id
from jobs.serve.sweep import find_orphans
from pipelines.media import storage
from tests.jobs.media_helpers import write_clip
from tests.jobs.net_helpers import free_port, run_app, start_mf_serve, wait_healthy
from tests.jobs.test_serve import PARAMS, TOKEN_A, TOKEN_B, _auth, _wait

TOKEN_GONE = "token-gone-" + "z" * 24  # a token the restarted service no longer accepts
NS_A = namespace(TOKEN_A)
# leftovers of a "previous process": name → (namespace, state, restarts, inputs kept, owner's lease)
# (oldest first: the order they are taken over in)
LEFTOVERS = {
    "no_inputs": (NS_A, "running", 0, False, None),
    "queued": (NS_A, "queued", 0, True, None),
    "running": (NS_A, "running", 0, True, "stale"),
    "twice": (NS_A, "running", 1, True, None),
    "no_room": (NS_A, "queued", 0, True, None),  # the queue (2) is full with the first two
    "revoked": (namespace(TOKEN_GONE), "queued", 0, True, None),
    "live": (NS_A, "running", 0, True, "live"),  # another replica's, still renewing its lease
}


@pytest.fixture(scope="module")
def media(fixture_cases, tmp_path_factory):
    d = tmp_path_factory.mktemp("life_media")
    return {"source": write_clip(fixture_cases, "s1", d / "source.mp4", frames=8, side=256),
            "driving": write_clip(fixture_cases, "m1", d / "driving.mp4", frames=8, side=256), "dir": d}


def _leftover(store: StateStore, media, name: str, created_at: float) -> tuple[str, str | None]:
    """An edit as the API writes it (state, uploads), left queued/running by an owner that is gone or alive; its id
    and owner."""
    ns, state, restarts, keep_inputs, lease = LEFTOVERS[name]
    edit_id = f"{name}-".ljust(24, "x")
    edit_dir = store.edit_dir(ns, edit_id)
    inputs = {label: storage.join(edit_dir, "inputs", f"{label}.mp4") for label in ("source", "driving")}
    if keep_inputs:
        for label, uri in inputs.items():
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(media[label], uri)
    params = parse_edit(FormData(list(PARAMS.items())), edit_id, edit_dir, ServeConfig()).params()
    owner = new_owner_id() if lease else None
    if lease:
        beat = time.time() - (0 if lease == "live" else 120)
        storage.atomic_write_text(store.lease(owner), json.dumps({"beat": beat}))
    store.write(ns, edit_id, {"id": edit_id, "state": state, "progress": 0.0, "error": None,
                              "created_at": created_at, "params": params, "owner": owner, "inputs": inputs,
                              "restarts": restarts, **({"started_at": created_at} if state == "running" else {})})
    return edit_id, owner


def _renew(store: StateStore, owner: str, stop: threading.Event) -> None:
    """Play the live replica that owns the "live" leftover: renew its lease until stopped."""
    while not stop.wait(1.0):
        store.beat(owner)


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory, media):
    """The leftovers written first, then the app started on their root."""
    from ray import serve

    root = storage.absolute(str(tmp_path_factory.mktemp("life_root")))
    store = StateStore(root)
    t0 = time.time() - 600
    made = {name: _leftover(store, media, name, t0 + i) for i, name in enumerate(LEFTOVERS)}
    ids, owners = {k: v[0] for k, v in made.items()}, {k: v[1] for k, v in made.items()}
    stop = threading.Event()
    threading.Thread(target=_renew, args=(store, owners["live"], stop), daemon=True).start()
    cfg = ServeConfig(root=root, tokens=(TOKEN_A, TOKEN_B), allowed_prefixes=(str(media["dir"]),), queue_size=2,
                      max_steps=1000, max_seconds=30, cpus_per_replica=1)
    base = run_app(cfg, free_port(), attempts=150)
    started = time.time()  # the app answers: its replicas are up
    yield {"base": base, "root": Path(root), "store": store, "ids": ids, "owners": owners, "started": started,
           "stop_live": stop}
    stop.set()
    serve.shutdown()


def _files(env, edit_id: str, ns: str = NS_A) -> list[str]:
    return sorted(p.name for p in (env["root"] / "edits" / ns / edit_id).iterdir())


def _state(env, edit_id: str, ns: str = NS_A) -> dict:
    return json.loads((env["root"] / "edits" / ns / edit_id / "state.json").read_text())


def _get(env, edit_id: str) -> dict:
    return requests.get(f"{env['base']}/v1/edits/{edit_id}", headers=_auth(), timeout=30).json()


def _until(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while not (got := check()):
        assert time.time() < deadline, what
        time.sleep(0.2)
    return got


# -- (a) edits a previous process left queued or running --------------------------------------------------------

def test_a_leftovers_are_resolved_at_start_up(server):
    ids = server["ids"]
    reasons = {"no_inputs": "source: its input is gone", "twice": "re-queued after a restart already",
               "no_room": "the queue had no room for it"}
    for name, why in reasons.items():
        st = _wait(server["base"], ids[name], timeout=60)
        assert st["state"] == "failed", st
        assert st["error"].startswith("the service restarted before this edit finished") and why in st["error"], st
        assert _files(server, ids[name]) == ["state.json"]  # its uploads and everything else are gone
    revoked = _until(lambda: _state(server, ids["revoked"], LEFTOVERS["revoked"][0]).get("state") == "failed" and
                     _state(server, ids["revoked"], LEFTOVERS["revoked"][0]), 30, "revoked edit not failed")
    assert "its token is no longer accepted" in revoked["error"]
    print(f"\nlifecycle: failed leftovers resolved {time.time() - server['started']:.1f} s after the app answered")
    for name in ("queued", "running"):  # re-queued (once) by the new owner, and run to the end
        st = _wait(server["base"], ids[name], timeout=180)
        assert st["state"] == "succeeded" and st["progress"] == 1.0, st
        on_disk = _state(server, ids[name])
        assert on_disk["restarts"] == 1 and on_disk["owner"] not in (None, server["owners"][name])
    print(f"lifecycle: re-queued leftovers succeeded {time.time() - server['started']:.1f} s after the app answered")


def test_a_live_owner_keeps_its_edit_until_its_lease_lapses(server):
    store, edit_id, owner = server["store"], server["ids"]["live"], server["owners"]["live"]
    assert _get(server, edit_id)["state"] == "running"  # another live replica's: not taken over
    assert _state(server, edit_id)["owner"] == owner
    server["stop_live"].set()
    time.sleep(1.5)  # its last beat is written
    storage.atomic_write_text(store.lease(owner), json.dumps({"beat": time.time() - 120}))  # that replica is gone
    t0 = time.time()
    _until(lambda: _state(server, edit_id).get("owner") != owner, 4 * LEASE_BEAT_S, "lapsed edit not taken over")
    print(f"\nlifecycle: lapsed lease taken over after {time.time() - t0:.1f} s")
    assert _wait(server["base"], edit_id, timeout=180)["state"] == "succeeded"


def test_a_find_orphans_without_a_server(tmp_path):
    store, me, other = StateStore(str(tmp_path)), new_owner_id(), new_owner_id()
    ns, now = "ab" * 10, time.time()
    names = {k: f"{k}-".ljust(20, "y") for k in ("mine", "other", "gone", "none", "done")}
    store.beat(other)
    for key, owner, state in (("mine", me, "running"), ("other", other, "queued"), ("gone", new_owner_id(), "running"),
                              ("none", None, "queued"), ("done", None, "failed")):
        store.write(ns, names[key], {"id": names[key], "state": state, "owner": owner, "created_at": now})
    orphans, others = find_orphans(store, me, [(ns, n) for n in names.values()])
    assert sorted(o[1] for o in orphans) == sorted([names["gone"], names["none"]])
    assert others == {(ns, names["other"])}
    later, _ = find_orphans(store, me, others, now=now + 60)  # its lease lapses
    assert [o[1] for o in later] == [names["other"]]


def _api_object(root: str):
    """A real EditAPI replica object (its class's own __init__, without Serve), as tests/infra/test_infra_tools.py
    builds one: no event loop, so no lease keeper."""
    import inspect

    from jobs.serve.api import EditAPI

    cls = next(c for c in EditAPI.func_or_class.__mro__ if c.__module__ == "jobs.serve.api"
               and "__init__" in vars(c) and not inspect.iscoroutinefunction(vars(c)["__init__"]))
    api = object.__new__(cls)
    cls.__init__(api, None, ServeConfig(root=root, tokens=(TOKEN_A,)))
    return api


def test_a_failure_storage_does_not_take_is_kept_and_written_later(tmp_path, monkeypatch):
    import asyncio

    from jobs.serve.lifecycle import worker_failure

    api, edit_id = _api_object(str(tmp_path)), "stuck-".ljust(24, "x")
    api.store.write(NS_A, edit_id, {"id": edit_id, "state": "running", "owner": api.owner})
    (tmp_path / "edits" / NS_A / edit_id / "windows").mkdir()
    reason = worker_failure(OSError(30, "Read-only file system", str(tmp_path / "x")), NS_A, str(tmp_path))
    assert reason.startswith("storage error: OSError: [Errno 30] Read-only file system") and str(tmp_path) not in reason
    real_write = api.store.write

    def read_only(*_a, **_k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(api.store, "write", read_only)
    asyncio.run(api.end_failed(NS_A, edit_id, reason))
    assert edit_id in api.ended and _state({"root": tmp_path}, edit_id)["state"] == "running"
    assert asyncio.run(api.current(NS_A, edit_id))["state"] == "failed"  # reported from memory meanwhile
    monkeypatch.setattr(api.store, "write", real_write)  # storage is back: the next lease beat writes it
    asyncio.run(api._write_all_ended())
    assert not api.ended and _state({"root": tmp_path}, edit_id)["error"] == reason
    assert _files({"root": tmp_path}, edit_id) == ["state.json"]


# -- (b) a worker killed mid-edit -----------------------------------------------------------------------------------

def _kill_worker() -> None:
    """Kill the app's EditWorker replica actor (a process kill: no clean-up of its own runs)."""
    import ray

    named = [a for a in ray.util.list_named_actors(all_namespaces=True) if "EditWorker" in a["name"]]
    assert len(named) == 1, named
    ray.kill(ray.get_actor(named[0]["name"], namespace=named[0]["namespace"]), no_restart=True)


def _post(env, media, **extra):
    with open(media["source"], "rb") as s, open(media["driving"], "rb") as d:
        r = requests.post(env["base"] + "/v1/edits", headers=_auth(), data={**PARAMS, **extra},
                          files={"source": ("source.mp4", s), "driving": ("driving.mp4", d)}, timeout=120)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_b_worker_killed_mid_edit_fails_the_edit_and_removes_its_files(server, media):
    edit_id = _post(server, media, steps="500")  # about 100 s of work: running when it is killed
    _until(lambda: _get(server, edit_id)["state"] == "running", 120, "long edit never ran")
    time.sleep(1.0)
    assert "inputs" in _files(server, edit_id)
    _kill_worker()
    t0 = time.time()
    st = _wait(server["base"], edit_id, timeout=30)
    failed_s = time.time() - t0
    assert st["state"] == "failed" and "the edit worker died" in st["error"], st
    _until(lambda: _files(server, edit_id) == ["state.json"], 5, f"files left: {_files(server, edit_id)}")
    nxt = _post(server, media)
    st = _wait(server["base"], nxt, timeout=180)
    print(f"\nlifecycle: killed worker's edit failed after {failed_s:.1f} s; next edit {st['state']} "
          f"{time.time() - t0:.1f} s after the kill")
    assert st["state"] == "succeeded", st
    assert requests.get(server["base"] + "/healthz", timeout=10).json()["queue"] == 0


# -- (c) the local Ray's token --------------------------------------------------------------------------------------

@pytest.fixture
def token_env(monkeypatch, tmp_path):
    """A temporary HOME, token mode asked for, no token configured (restored afterwards)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(var, "x")  # recorded, so what local_auth sets is undone too
        monkeypatch.delenv(var)
    return tmp_path


def test_c_local_auth_writes_no_token_file(token_env):
    assert local_auth() == "token"
    assert len(os.environ["RAY_AUTH_TOKEN"]) == 64 and not (token_env / ".ray").exists()


def test_c_a_readable_token_file_is_used_with_a_warning(token_env, caplog):
    token = token_env / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("t" * 32)
    token.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="jobs.runtime"):
        assert local_auth() == "token"
    assert "RAY_AUTH_TOKEN" not in os.environ and "chmod 600" in caplog.text
    assert token.stat().st_mode & 0o777 == 0o644  # the user's file is theirs: reported, not changed
    caplog.clear()
    token.chmod(0o600)
    local_auth()
    assert "RAY_AUTH_TOKEN" not in os.environ and "chmod" not in caplog.text


def _gcs_env(pid: int) -> dict:
    """The environment of the GCS server the ``mf serve`` process ``pid`` started."""
    for child in psutil.Process(pid).children(recursive=True):
        if any("gcs_server" in part for part in child.cmdline()):
            return child.environ()
    raise AssertionError("no gcs_server under mf serve")


def test_c_mf_serve_sets_up_its_ray_token_without_a_file(tmp_path):
    port = free_port()
    t0, ray_tmp = time.time(), tempfile.mkdtemp(prefix="mfsv", dir="/tmp")  # short: Ray's socket paths
    proc = start_mf_serve(tmp_path, port, ray_tmp, TOKEN_A)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(proc, base)
        up_s = time.time() - t0
        assert not (tmp_path / "home" / ".ray").exists()  # Ray would have written ~/.ray/auth_token, 0644
        gcs = _gcs_env(proc.pid)
        assert gcs.get("RAY_AUTH_MODE") == "token" and len(gcs.get("RAY_AUTH_TOKEN", "")) == 64
        assert requests.get(base + "/v1/edits/" + "a" * 20, headers=_auth(), timeout=10).status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this test started
            proc.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"\nlifecycle: mf serve up in {up_s:.1f} s, stopped in {time.time() - t0 - up_s:.1f} s")
    assert not (tmp_path / "home" / ".ray").exists()


def test_b_worker_checks_the_inputs_again_before_it_runs(tmp_path, fixture_cases, media):
    """An input rewritten after the API accepted it (a storage URI now names a larger video) is not edited: the
    worker checks limits and cost again, fails the edit with the reason and leaves only its state."""
    from jobs.serve.inputs import with_inputs
    from jobs.serve.worker import EditWorker

    cfg = ServeConfig(root=str(tmp_path / "root"), tokens=(TOKEN_A,), max_side=256)
    worker = object.__new__(EditWorker.func_or_class)
    EditWorker.func_or_class.__init__(worker, cfg)
    edit_id = "rewritten-".ljust(24, "x")
    source = tmp_path / "bucket" / "source.mp4"
    source.parent.mkdir()
    shutil.copy(media["source"], source)
    req = with_inputs(parse_edit(FormData(list(PARAMS.items())), edit_id, worker.store.edit_dir(NS_A, edit_id), cfg),
                      {"source": str(source), "driving": str(media["driving"])})
    assert worker._recheck(req) is None  # as accepted
    write_clip(fixture_cases, "s1", source, frames=8, side=320)  # rewritten: over max_side
    worker.store.write(NS_A, edit_id, {"id": edit_id, "state": "queued", "progress": 0.0})
    row = worker.run(NS_A, edit_id, req.to_dict())
    state = _state({"root": tmp_path / "root"}, edit_id)
    assert row.status == "failed" and state["state"] == "failed", state
    assert state["error"].startswith("not run: source: 320x320 exceeds the 256 px limit"), state
    assert _files({"root": tmp_path / "root"}, edit_id) == ["state.json"]
