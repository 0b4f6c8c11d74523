"""The HTTP ingress of the Serve app: :class:`EditAPI`, whose methods are the routes (the API: :mod:`jobs.serve`).

Every request body passes :class:`~jobs.serve.limits.BodyGuard` first, under :meth:`EditAPI.admit`'s limits: a new
edit's body is read only for a known token, while fewer than ``max_uploads`` bodies (``max_uploads_per_token`` of
that token) are being received and the queue has room, and only up to ``ServeConfig.max_body_bytes``. Once the body
is complete the API replica takes a slot of the bounded queue (edits queued or running, at most
``max_queued_per_token`` per token), saves and checks the inputs, writes the edit's first state and hands the
request to an :class:`~jobs.serve.worker.EditWorker` replica through its deployment handle; status, video and
delete read the state and files from storage. A timer sweeps expired files (:mod:`jobs.serve.sweep`).
Failures and restarts (the owner leases, orphans re-queued or failed): :mod:`jobs.serve.lifecycle`.
"""
import asyncio
import errno
import hmac
import logging
import secrets
import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any, Optional

from fastapi import FastAPI, Header, HTTPException
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Counter
from ray import serve
from ray.serve.handle import DeploymentHandle

from jobs.serve.config import ServeConfig
from jobs.serve.inputs import (
    CHUNK_BYTES,
    check_inputs,
    input_uris,
    parse_edit,
    with_inputs,
)
from jobs.serve.lifecycle import EditLifecycle, worker_failure
from jobs.serve.limits import BodyGuard, BodyLimits, read_form
from jobs.serve.store import (
    EditState,
    StateStore,
    is_active,
    namespace,
    new_owner_id,
    state_of,
    valid_edit_id,
)
from jobs.serve.sweep import Sweeper
from pipelines.batch.metrics import PipelineMetrics
from pipelines.batch.requests import Request
from pipelines.batch.results import ResultRow
from pipelines.batch.status import FAILED
from pipelines.media import storage

log = logging.getLogger("mf.serve")

STATUS_FIELDS = ("id", "state", "progress", "error", "frames", "fps", "created_at", "started_at", "finished_at",
                 "params")
RETRY_AFTER_S = "5"
EDITS_PATH = "/v1/edits"
NAMESPACE_STATE = "mf_namespace"  # where admit() leaves the caller's namespace in the request's ASGI state

fastapi_app = FastAPI(title="motionfollower-ray", version="1")


def _replica_api() -> Optional["EditAPI"]:
    try:
        api = serve.get_replica_context().servable_object
    except Exception:  # noqa: BLE001 - outside a replica, or while it starts
        return None
    return api if hasattr(api, "admit") else None


fastapi_app.add_middleware(BodyGuard, admission=_replica_api)  # inner: runs after count_requests below


@fastapi_app.middleware("http")
async def count_requests(request: HttpRequest, call_next):
    """Every request: the ``http`` stage latency and ``mf_serve_http_requests_total{route, code}`` of this replica;
    an unhandled error becomes a logged 500."""
    start = time.perf_counter()
    api = _replica_api()
    if api is not None:
        api.start_sweeping()
    try:
        response = await call_next(request)
    except Exception:  # noqa: BLE001
        log.exception("unhandled error on %s", request.url.path)
        response = JSONResponse({"detail": "internal error"}, status_code=500)
    route = getattr(request.scope.get("route"), "path", "other")
    if api is not None:
        api.observe_http(route, response.status_code, time.perf_counter() - start)
    return response


def _file_chunks(fs: Any, path: str) -> Iterator[bytes]:
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk


def _header(scope: dict, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return None


def new_edit_id() -> str:
    """144 random bits, URL-safe; never starting with '-' or '_' (a request id starts with a letter or digit, and
    nothing named after it may read as an option)."""
    while not (edit_id := secrets.token_urlsafe(18))[0].isalnum():
        pass
    return edit_id


def storage_refusal(exc: OSError) -> HTTPException:
    """507 for a full storage root, 503 (retry later) for any other storage error; the errno's name, no path."""
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HTTPException(507, f"the service's storage is full ({name}); retry later",
                             headers={"Retry-After": RETRY_AFTER_S})
    return HTTPException(503, f"the service's storage is unavailable ({name}); retry later",
                         headers={"Retry-After": RETRY_AFTER_S})


def _too_many(detail: str) -> HTTPException:
    return HTTPException(429, detail + "; retry later", headers={"Retry-After": RETRY_AFTER_S})


@serve.deployment(name="EditAPI", num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress(fastapi_app)
class EditAPI(EditLifecycle):
    """The routes. ``worker`` is the handle of the app's :class:`~jobs.serve.worker.EditWorker` deployment."""

    def __init__(self, worker: DeploymentHandle, cfg: ServeConfig):
        self.worker = worker
        self.cfg = cfg
        self.store = StateStore(cfg.root)
        self.owner = new_owner_id()
        self.sweeper = Sweeper(self.store, cfg.retention_s, owner=self.owner)
        self.pipeline_metrics = PipelineMetrics()
        self.http_requests = Counter("mf_serve_http_requests", "HTTP requests of the edit API, by route and status "
                                     "code", ["route", "code"], registry=self.pipeline_metrics.registry)
        self.active: dict[str, str] = {}  # edit id → namespace of the edits queued or running here (the queue)
        self.uploads: Tally[str] = Tally()  # namespace → request bodies of new edits being received
        self.tokens = {namespace(t): t for t in cfg.tokens}
        self._tasks: set[asyncio.Task] = set()
        self._sweeping: Optional[asyncio.Task] = None
        self.ended: dict[str, tuple[str, dict]] = {}  # edit id → (namespace, failure) storage has not taken yet
        self.watched: set[tuple[str, str]] = set()  # active edits of other live replicas (orphans once they lapse)
        self._scanned = False  # the whole root was looked at for orphans
        self._keeping: Optional[asyncio.Task] = None
        self._start_keeping()

    def __del__(self):
        """Serve's graceful shutdown: drop this replica's lease, so a restart takes its edits over at once."""
        if getattr(self, "_keeping", None) is not None:
            try:
                self.store.drop_lease(self.owner)
            except Exception:  # noqa: BLE001 - it lapses on its own
                pass

    # -- helpers -------------------------------------------------------------------------------------------------
    def observe_http(self, route: str, code: int, seconds: float) -> None:
        self.pipeline_metrics.observe_stage("http", seconds)
        self.http_requests.labels(route=route, code=str(code)).inc()

    def auth(self, authorization: Optional[str]) -> str:
        """The namespace of the caller's bearer token; 401 without a known token."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        token = authorization.split(" ", 1)[1].strip()
        ns = namespace(token)
        known = self.tokens.get(ns)
        if known is None or not hmac.compare_digest(known, token):
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
        return ns

    def queue_check(self, ns: str) -> None:
        """429 when the queue, or this token's share of it, is full."""
        if len(self.active) >= self.cfg.queue_size:
            raise _too_many(f"queue full ({self.cfg.queue_size} edits queued or running)")
        mine = sum(1 for owner in self.active.values() if owner == ns)
        if mine >= self.cfg.max_queued_per_token:
            raise _too_many(f"this token has {mine} edits queued or running (max_queued_per_token "
                            f"{self.cfg.max_queued_per_token})")

    def admit(self, scope: dict) -> BodyLimits:
        """The body limits of a request (:class:`~jobs.serve.limits.BodyGuard`): a new edit's body only from a
        known token, while upload and queue slots are free; other requests' bodies stay small."""
        cfg = self.cfg
        if scope.get("method") != "POST" or not scope.get("path", "").rstrip("/").endswith(EDITS_PATH):
            return BodyLimits(cfg.max_field_bytes, cfg.body_idle_s, cfg.body_timeout_s)
        ns = self.auth(_header(scope, b"authorization"))
        scope.setdefault("state", {})[NAMESPACE_STATE] = ns  # the route reads it: one auth per request
        self.queue_check(ns)  # refused before a byte is read; the slot itself is taken once the body is in
        if sum(self.uploads.values()) >= cfg.max_uploads:
            raise _too_many(f"{cfg.max_uploads} uploads in progress")
        if self.uploads[ns] >= cfg.max_uploads_per_token:
            raise _too_many(f"this token has {self.uploads[ns]} uploads in progress (max_uploads_per_token "
                            f"{cfg.max_uploads_per_token})")
        self.uploads[ns] += 1

        def release() -> None:
            self.uploads[ns] -= 1
            if self.uploads[ns] <= 0:
                del self.uploads[ns]

        return BodyLimits(cfg.max_body_bytes, cfg.body_idle_s, cfg.body_timeout_s, release)

    async def owned(self, edit_id: str, authorization: Optional[str]) -> tuple[str, dict]:
        """The caller's namespace and the edit's state; 404 for a malformed id (before storage is touched), an
        edit of another token, a deleted edit or none."""
        ns = self.auth(authorization)
        if not valid_edit_id(edit_id):
            raise HTTPException(404, "no such edit")
        state = await self.current(ns, edit_id)
        if state is None:
            raise HTTPException(404, "no such edit")
        return ns, state

    async def current(self, ns: str, edit_id: str) -> Optional[dict]:
        """The edit's state: from storage, with a failure this replica holds (not written yet) over it."""
        held = self.ended.get(edit_id)
        held = held[1] if held and held[0] == ns else None
        try:
            state = await asyncio.to_thread(self.store.read, ns, edit_id)
        except Exception:  # noqa: BLE001 - storage does not answer: what this replica knows
            if held is None:
                raise
            return {"id": edit_id, **held}
        return {**state, **held} if held and is_active(state) else state

    def take_slot(self, ns: str) -> str:
        """A new edit id holding a queue slot; 429 when the queue (or the token's share) is full."""
        self.queue_check(ns)
        edit_id = new_edit_id()
        self.active[edit_id] = ns  # held from here on (concurrent posts must not all pass the check)
        return edit_id

    async def accept(self, form: Any, ns: str, edit_id: str) -> Request:
        """The edit's request, inputs saved and checked (normalised: probed, nothing beyond the first frame
        decoded); 422 with the reason for an input that is no usable video or pose track, or over a limit."""
        edit_dir = self.store.edit_dir(ns, edit_id)
        req = parse_edit(form, edit_id, edit_dir, self.cfg)
        inputs = await input_uris(form, edit_dir, self.cfg)
        req = with_inputs(req, inputs)
        await asyncio.to_thread(check_inputs, req, self.cfg)
        return req

    def _discard(self, ns: str, edit_id: str) -> None:
        """What a refused edit left (best effort: storage may be what refused it)."""
        try:
            self.store.remove(ns, edit_id)
        except OSError as exc:
            log.warning("edit %s: its files could not be removed (%s)", edit_id, type(exc).__name__)

    def enqueue(self, ns: str, edit_id: str, req: Request) -> None:
        """The edit's first state (its owner, parameters and inputs: what a restart needs) and its worker task."""
        state = {"id": edit_id, "state": EditState.QUEUED, "progress": 0.0, "error": None, "created_at": time.time(),
                 "params": req.params(), "owner": self.owner, "inputs": {"source": req.source,
                                                                          "driving": req.driving}}
        self.store.write(ns, edit_id, state)
        self.start(ns, edit_id, req)

    def start(self, ns: str, edit_id: str, req: Request) -> None:
        """The worker task of a queued edit (holding its queue slot)."""
        task = asyncio.get_running_loop().create_task(self.run_edit(ns, edit_id, req.to_dict()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_edit(self, ns: str, edit_id: str, request: dict[str, Any]) -> None:
        """Run the edit on a worker replica; frees the queue slot when it ends."""
        try:
            row: Optional[ResultRow] = await self.worker.run.remote(ns, edit_id, request)
            if row is not None:  # None: the edit was deleted, or ended elsewhere (nothing to count)
                self.pipeline_metrics.record_result_row(row)
        except Exception as exc:  # noqa: BLE001 - the worker died, or storage failed it
            log.exception("edit %s failed in the worker", edit_id)
            await self.end_failed(ns, edit_id, worker_failure(exc, ns, self.store.root))
            self.pipeline_metrics.request_finished(FAILED)
        finally:
            self.active.pop(edit_id, None)

    def start_sweeping(self) -> None:
        """Start the expiry timer of this replica (once, on the first request: the event loop runs by then)."""
        if self._sweeping is None:
            self._sweeping = asyncio.get_running_loop().create_task(self._sweep_forever())
        self._start_keeping()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                removed = await asyncio.to_thread(self.sweeper.run_once)
                if removed:
                    log.info("sweep: removed %d expired edits/tombstones", removed)
            except Exception:  # noqa: BLE001 - the timer lives on
                log.exception("sweep failed")
            await asyncio.sleep(self.cfg.sweep_interval_s)

    # -- routes --------------------------------------------------------------------------------------------------
    @fastapi_app.get("/healthz")
    async def healthz(self):
        return {"ok": True, "queue": len(self.active), "queue_size": self.cfg.queue_size}

    @fastapi_app.get("/metrics")
    async def metrics(self):
        self.pipeline_metrics.set_queue_depth(len(self.active))
        return Response(self.pipeline_metrics.render(), media_type="text/plain; version=0.0.4")

    @fastapi_app.post(EDITS_PATH, status_code=202)
    async def create(self, request: HttpRequest, authorization: Optional[str] = Header(None)):
        ns = request.scope.get("state", {}).get(NAMESPACE_STATE) or self.auth(authorization)  # admit() did it
        form = await read_form(request, self.cfg.max_fields, self.cfg.max_field_bytes)
        try:
            edit_id = self.take_slot(ns)
            try:
                req = await self.accept(form, ns, edit_id)
                self.enqueue(ns, edit_id, req)
            except BaseException as exc:
                self.active.pop(edit_id, None)
                await asyncio.to_thread(self._discard, ns, edit_id)
                if isinstance(exc, OSError):  # the root is full or read-only: say so, nothing of the edit is kept
                    log.warning("edit %s not accepted: storage %s: %s", edit_id, type(exc).__name__, exc)
                    raise storage_refusal(exc) from None
                raise
        finally:
            await form.close()
        return JSONResponse({"id": edit_id, "status_url": f"{EDITS_PATH}/{edit_id}",
                             "video_url": f"{EDITS_PATH}/{edit_id}/video"}, status_code=202)

    @fastapi_app.get(EDITS_PATH + "/{edit_id}")
    async def status(self, edit_id: str, authorization: Optional[str] = Header(None)):
        _, state = await self.owned(edit_id, authorization)
        return {k: state.get(k) for k in STATUS_FIELDS}

    @fastapi_app.get(EDITS_PATH + "/{edit_id}/video")
    async def video(self, edit_id: str, authorization: Optional[str] = Header(None)):
        _, state = await self.owned(edit_id, authorization)
        if state_of(state) is not EditState.SUCCEEDED or not state.get("output"):
            raise HTTPException(409, f"edit is {state.get('state')}; no video")
        fs, path = storage.open_fs(state["output"])
        return StreamingResponse(_file_chunks(fs, path), media_type="video/mp4",
                                 headers={"Content-Disposition": f'attachment; filename="{edit_id}.mp4"'})

    @fastapi_app.delete(EDITS_PATH + "/{edit_id}", status_code=204)
    async def delete(self, edit_id: str, authorization: Optional[str] = Header(None)):
        """Cancel and delete: the edit's tombstone first (every writer stops at it), then its folder."""
        ns, _ = await self.owned(edit_id, authorization)
        await asyncio.to_thread(self.store.bury, ns, edit_id)
        self.active.pop(edit_id, None)
        self.ended.pop(edit_id, None)
        return Response(status_code=204)
