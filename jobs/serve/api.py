"""The HTTP ingress of the Serve app: :class:`EditAPI`, whose methods are the routes (the API: :mod:`jobs.serve`).

The API replica keeps the bounded queue (edits queued or running), saves and checks the inputs, writes the edit's
first state and hands the request to an :class:`~jobs.serve.worker.EditWorker` replica through its deployment
handle; status, video and delete read the state and files from storage.
"""
import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any, Optional

from fastapi import FastAPI, Header, HTTPException
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Counter
from ray import serve
from ray.serve.handle import DeploymentHandle

from jobs.serve.config import ServeConfig
from jobs.serve.inputs import CHUNK_BYTES, LABELS, check_limits, input_uris, parse_edit
from jobs.serve.store import ACTIVE_STATES, StateStore, namespace
from pipelines.batch.metrics import PipelineMetrics
from pipelines.batch.requests import Request
from pipelines.media import storage

log = logging.getLogger("mf.serve")

STATUS_FIELDS = ("id", "state", "progress", "error", "frames", "fps", "created_at", "finished_at", "params")
RETRY_AFTER_S = "5"

fastapi_app = FastAPI(title="motionfollower-ray", version="1")


@fastapi_app.middleware("http")
async def count_requests(request: HttpRequest, call_next):
    """Every request: the ``http`` stage latency and ``mf_serve_http_requests_total{route, code}`` of this replica;
    an unhandled error becomes a logged 500."""
    start = time.perf_counter()
    try:
        response = await call_next(request)
    except Exception:  # noqa: BLE001
        log.exception("unhandled error on %s", request.url.path)
        response = JSONResponse({"detail": "internal error"}, status_code=500)
    route = getattr(request.scope.get("route"), "path", "other")
    api: EditAPI = serve.get_replica_context().servable_object
    api.observe_http(route, response.status_code, time.perf_counter() - start)
    return response


def _file_chunks(fs: Any, path: str) -> Iterator[bytes]:
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk


@serve.deployment(name="EditAPI", num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress(fastapi_app)
class EditAPI:
    """The routes. ``worker`` is the handle of the app's :class:`~jobs.serve.worker.EditWorker` deployment."""

    def __init__(self, worker: DeploymentHandle, cfg: ServeConfig):
        self.worker = worker
        self.cfg = cfg
        self.store = StateStore(cfg.root)
        self.pipeline_metrics = PipelineMetrics()
        self.http_requests = Counter("mf_serve_http_requests", "HTTP requests of the edit API, by route and status "
                                     "code", ["route", "code"], registry=self.pipeline_metrics.registry)
        self.active: set[str] = set()  # ids of the edits queued or running here (the bounded queue)
        self.tokens = {namespace(t): t for t in cfg.tokens}
        self._tasks: set[asyncio.Task] = set()

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

    async def owned(self, edit_id: str, authorization: Optional[str]) -> tuple[str, dict]:
        """The caller's namespace and the edit's state; 404 for an edit of another token or none."""
        ns = self.auth(authorization)
        state = await asyncio.to_thread(self.store.read, ns, edit_id)
        if state is None:
            raise HTTPException(404, "no such edit")
        return ns, state

    def take_slot(self, content_length: Optional[str]) -> str:
        """A new edit id holding a queue slot; 429 when the queue is full, 413 for a body over the upload limit."""
        if len(self.active) >= self.cfg.queue_size:
            raise HTTPException(429, f"queue full ({self.cfg.queue_size} edits queued or running); retry later",
                                headers={"Retry-After": RETRY_AFTER_S})
        if content_length and int(content_length) > 2 * self.cfg.max_upload_bytes + (1 << 20):
            raise HTTPException(413, f"request body of {content_length} bytes exceeds the upload limit")
        edit_id = secrets.token_urlsafe(18)
        self.active.add(edit_id)  # held from here on (concurrent posts must not all pass the check)
        return edit_id

    async def accept(self, request: HttpRequest, ns: str, edit_id: str) -> tuple[Request, list[str]]:
        """The edit's request, inputs saved or checked; and the inputs that are no readable video (→ failed edit)."""
        edit_dir = self.store.edit_dir(ns, edit_id)
        form = await request.form(max_part_size=self.cfg.max_upload_bytes + 1)
        inputs = await input_uris(form, edit_dir, self.cfg)
        req = parse_edit(form, inputs, edit_id, edit_dir, self.cfg)
        errors = [f"{label}: {err}" for label in LABELS
                  if (err := await asyncio.to_thread(check_limits, inputs[label], label, self.cfg))]
        return req, errors

    def enqueue(self, ns: str, edit_id: str, req: Request, errors: list[str]) -> None:
        """The edit's first state; a worker task unless its inputs already failed it."""
        state = {"id": edit_id, "state": "queued", "progress": 0.0, "error": None, "created_at": time.time(),
                 "params": req.params()}
        if errors:
            self.store.write(ns, edit_id, {**state, "state": "failed", "error": "; ".join(errors)})
            self.pipeline_metrics.request_finished("failed")
            self.active.discard(edit_id)
            return
        self.store.write(ns, edit_id, state)
        task = asyncio.get_running_loop().create_task(self.run_edit(ns, edit_id, req.to_dict()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_edit(self, ns: str, edit_id: str, request: dict[str, Any]) -> None:
        """Run the edit on a worker replica; frees the queue slot when it ends."""
        try:
            row = await self.worker.run.remote(ns, edit_id, request)
            if isinstance(row, dict) and "status" in row:
                self.pipeline_metrics.record_result_row(row)
        except Exception as exc:  # noqa: BLE001
            log.exception("edit %s failed in the worker", edit_id)
            self.store.update(ns, edit_id, state="failed", error=f"{type(exc).__name__}: {exc}")
            self.pipeline_metrics.request_finished("failed")
        finally:
            self.active.discard(edit_id)

    # -- routes --------------------------------------------------------------------------------------------------
    @fastapi_app.get("/healthz")
    async def healthz(self):
        return {"ok": True, "queue": len(self.active), "queue_size": self.cfg.queue_size}

    @fastapi_app.get("/metrics")
    async def metrics(self):
        self.pipeline_metrics.set_queue_depth(len(self.active))
        return Response(self.pipeline_metrics.render(), media_type="text/plain; version=0.0.4")

    @fastapi_app.post("/v1/edits", status_code=202)
    async def create(self, request: HttpRequest, authorization: Optional[str] = Header(None)):
        ns = self.auth(authorization)
        edit_id = self.take_slot(request.headers.get("content-length"))
        try:
            req, errors = await self.accept(request, ns, edit_id)
        except BaseException:
            self.active.discard(edit_id)
            await asyncio.to_thread(self.store.delete, ns, edit_id)
            raise
        self.enqueue(ns, edit_id, req, errors)
        return JSONResponse({"id": edit_id, "status_url": f"/v1/edits/{edit_id}",
                             "video_url": f"/v1/edits/{edit_id}/video"}, status_code=202)

    @fastapi_app.get("/v1/edits/{edit_id}")
    async def status(self, edit_id: str, authorization: Optional[str] = Header(None)):
        _, state = await self.owned(edit_id, authorization)
        return {k: state.get(k) for k in STATUS_FIELDS}

    @fastapi_app.get("/v1/edits/{edit_id}/video")
    async def video(self, edit_id: str, authorization: Optional[str] = Header(None)):
        _, state = await self.owned(edit_id, authorization)
        if state.get("state") != "succeeded" or not state.get("output"):
            raise HTTPException(409, f"edit is {state.get('state')}; no video")
        fs, path = storage.open_fs(state["output"])
        return StreamingResponse(_file_chunks(fs, path), media_type="video/mp4",
                                 headers={"Content-Disposition": f'attachment; filename="{edit_id}.mp4"'})

    @fastapi_app.delete("/v1/edits/{edit_id}", status_code=204)
    async def delete(self, edit_id: str, authorization: Optional[str] = Header(None)):
        ns, state = await self.owned(edit_id, authorization)
        if state.get("state") in ACTIVE_STATES:
            self.store.update(ns, edit_id, state="cancelled")
        self.active.discard(edit_id)
        await asyncio.to_thread(self.store.delete, ns, edit_id)
        return Response(status_code=204)
