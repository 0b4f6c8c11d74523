"""The Ray Serve app for ad-hoc edits (``mf serve``; RayService import path ``jobs.serve:app``).

HTTP API (JSON unless stated)::

    POST   /v1/edits               multipart: ``source``/``driving`` files, or ``source_uri``/``driving_uri`` form
                                   fields (allow-listed storage prefixes only), plus request parameters
                                   (steps, cfg, seed, camera, window, overlap, size, length_policy, preview)
                                   → 202 {"id", "status_url", "video_url"}
    GET    /v1/edits/{id}          → {"id", "state": queued|running|succeeded|failed|cancelled, "progress", "error"}
    GET    /v1/edits/{id}/video    → video/mp4 (409 while not finished)
    DELETE /v1/edits/{id}          → 204 (cancels a queued/running edit and deletes its files)
    GET    /healthz                → {"ok": true}
    GET    /metrics                → Prometheus text

Every /v1 call needs ``Authorization: Bearer <token>`` with a token from ``MF_SERVE_TOKENS`` (comma-separated);
each token's edits live in their own namespace, so one client cannot read or delete another's. Edit ids are
unguessable. Uploads over the size limit get 413; videos over the duration/resolution limits and bad parameters
get 422; storage URIs outside the allow-list get 403 (``file://`` and server paths are never read unless a prefix
explicitly allows them); when the bounded queue is full, 429. Results are written to storage through fsspec, never
kept in memory. The GPU replicas (``max_ongoing_requests=1``) run the batch pipeline's own per-request code
(:func:`pipelines.single.edit_request`), not a second implementation.
"""
import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Optional

log = logging.getLogger("mf.serve")

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
REQUEST_FIELDS = ("steps", "cfg", "seed", "camera", "window", "overlap", "size", "length_policy", "preview")


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in os.environ.get(name, "").split(",") if s.strip())


@dataclass
class ServeConfig:
    root: str = "mf_out/serve"  # storage root for uploads, states and results (any fsspec URI)
    tokens: tuple[str, ...] = ()
    allowed_prefixes: tuple[str, ...] = ()  # storage URI prefixes a request may name
    max_upload_bytes: int = 256 * 2**20
    max_seconds: float = 120.0
    max_side: int = 1920
    queue_size: int = 8  # edits queued or running at once (per API replica)
    weights: Optional[str] = None
    preset: str = "tiny"
    dtype: Optional[str] = None
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    replicas: int = 1
    defaults: dict = field(default_factory=dict)  # request parameter defaults (e.g. {"steps": 50})

    @classmethod
    def from_env(cls) -> "ServeConfig":
        e = os.environ.get
        return cls(
            root=e("MF_SERVE_ROOT", cls.root), tokens=_env_list("MF_SERVE_TOKENS") or _env_list("MF_SERVE_TOKEN"),
            allowed_prefixes=_env_list("MF_SERVE_ALLOWED_PREFIXES"),
            max_upload_bytes=int(float(e("MF_SERVE_MAX_UPLOAD_MB", "256")) * 2**20),
            max_seconds=float(e("MF_SERVE_MAX_SECONDS", "120")), max_side=int(e("MF_SERVE_MAX_SIDE", "1920")),
            queue_size=int(e("MF_SERVE_QUEUE", "8")), weights=e("MF_SERVE_WEIGHTS") or None,
            preset=e("MF_SERVE_PRESET", "tiny"), dtype=e("MF_SERVE_DTYPE") or None,
            gpus_per_replica=float(e("MF_SERVE_GPUS", "0")), cpus_per_replica=float(e("MF_SERVE_CPUS", "1")),
            replicas=int(e("MF_SERVE_REPLICAS", "1")), defaults=json.loads(e("MF_SERVE_DEFAULTS", "{}")))


def namespace(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:20]


def prefix_allowed(uri: str, prefixes: tuple[str, ...]) -> bool:
    """Only URIs under an explicitly configured prefix; no path tricks (``..``) and no local paths by default."""
    if ".." in uri.replace("\\", "/").split("/"):
        return False
    return any(uri.startswith(p.rstrip("/") + "/") for p in prefixes)


class StateStore:
    """Edit states as JSON documents under ``<root>/edits/<namespace>/<id>/state.json`` (atomic writes)."""

    def __init__(self, root: str):
        self.root = root

    def edit_dir(self, ns: str, edit_id: str) -> str:
        from pipelines import storage
        return storage.join(self.root, "edits", ns, edit_id)

    def read(self, ns: str, edit_id: str) -> Optional[dict]:
        from pipelines import storage
        uri = storage.join(self.edit_dir(ns, edit_id), "state.json")
        if not storage.exists(uri):
            return None
        return json.loads(storage.read_bytes(uri))

    def write(self, ns: str, edit_id: str, state: dict) -> dict:
        from pipelines import storage
        state = {**state, "updated_at": time.time()}
        storage.atomic_write_text(storage.join(self.edit_dir(ns, edit_id), "state.json"), json.dumps(state))
        return state

    def update(self, ns: str, edit_id: str, **changes) -> Optional[dict]:
        cur = self.read(ns, edit_id)
        if cur is None:
            return None
        return self.write(ns, edit_id, {**cur, **changes})

    def delete(self, ns: str, edit_id: str) -> None:
        from pipelines import storage
        fs, path = storage.open_fs(self.edit_dir(ns, edit_id))
        if fs.exists(path):
            fs.rm(path, recursive=True)


class EditCancelled(Exception):
    pass


class EditWorkerImpl:
    """Holds the model; runs one edit at a time through the pipeline's per-request code."""

    def __init__(self, cfg: ServeConfig):
        from mf_model import load_model

        self.cfg = cfg
        self.store = StateStore(cfg.root)
        device = "cuda" if cfg.gpus_per_replica > 0 else "cpu"
        self.device = device
        self.dtype = cfg.dtype or ("fp16" if device == "cuda" else "fp32")
        self.model = load_model(cfg.weights, preset_name=cfg.preset, dtype=self.dtype, device=device)

    def run(self, ns: str, edit_id: str, request: dict) -> dict:
        from pipelines.manifest import Request
        from pipelines.single import edit_request

        state = self.store.read(ns, edit_id)
        if state is None or state.get("state") == "cancelled":
            return {"state": "cancelled"}
        self.store.update(ns, edit_id, state="running", started_at=time.time())
        last = [0.0]

        def progress(kind: str, done: int, total: int) -> None:
            if kind != "window":
                return
            now = time.monotonic()
            if now - last[0] < 0.5 and done < total:
                return
            last[0] = now
            cur = self.store.read(ns, edit_id)
            if cur is None or cur.get("state") == "cancelled":
                raise EditCancelled(edit_id)
            self.store.write(ns, edit_id, {**cur, "progress": round(done / max(total, 1), 3)})

        req = Request(**request)
        try:
            row = edit_request(req, self._run_config(ns, edit_id), self.model, progress=progress)
        except EditCancelled:
            return {"state": "cancelled"}
        except Exception as exc:  # noqa: BLE001 - the edit fails, the replica lives on
            log.exception("edit %s crashed", edit_id)
            row = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        cur = self.store.read(ns, edit_id)
        if cur is None or cur.get("state") == "cancelled":
            return {"state": "cancelled"}
        ok = row.get("status") == "succeeded"
        self.store.write(ns, edit_id, {
            **cur, "state": "succeeded" if ok else "failed", "progress": 1.0 if ok else cur.get("progress", 0.0),
            "error": None if ok else row.get("error"), "output": row.get("output_uri"),
            "frames": row.get("frames"), "fps": row.get("fps"), "finished_at": time.time()})
        return row

    def _run_config(self, ns: str, edit_id: str):
        from pipelines.ray_pipeline import RunConfig

        out = self.store.edit_dir(ns, edit_id)
        return RunConfig(manifest="", out=out, weights=self.cfg.weights, preset=self.cfg.preset, dtype=self.dtype,
                         device=self.device)


def create_api(cfg: ServeConfig, submit):
    """The FastAPI app. ``submit(ns, edit_id, request_dict)`` is an async callable that runs the edit."""
    from fastapi import FastAPI, Header, HTTPException, Request as HttpRequest
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    from pipelines import storage
    from pipelines.manifest import parse_row
    from pipelines.metrics import PipelineMetrics

    api = FastAPI(title="motionfollower-ray", version="1")
    store = StateStore(cfg.root)
    metrics = PipelineMetrics()
    from prometheus_client import Counter

    http_total = Counter("mf_serve_http_requests", "HTTP requests of the edit API, by route and status code",
                         ["route", "code"], registry=metrics.registry)
    active: set = set()
    tokens = {namespace(t): t for t in cfg.tokens}

    def auth(authorization: Optional[str]) -> str:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        token = authorization.split(" ", 1)[1].strip()
        ns = namespace(token)
        known = tokens.get(ns)
        if known is None or not hmac.compare_digest(known, token):
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
        return ns

    async def save_upload(upload, uri: str) -> int:
        size = 0
        with storage.atomic_open(uri, "wb") as fh:
            while True:
                chunk = await upload.read(1 << 20)
                if not chunk:
                    break
                size += len(chunk)
                if size > cfg.max_upload_bytes:
                    raise HTTPException(413, f"upload {upload.filename!r} exceeds {cfg.max_upload_bytes} bytes")
                fh.write(chunk)
        return size

    def check_limits(uri: str, label: str) -> Optional[str]:
        """None when acceptable; an error text (→ failed edit) when the file is not a readable video.
        Raises 422 for duration/resolution over the limits."""
        from pipelines.poses.keypoints import read_pose_track
        from pipelines.prepare import InputError, probe_video

        if uri.lower().endswith((".parquet", ".json")) and label == "driving":
            try:
                track = read_pose_track(uri)
            except (InputError, ValueError, OSError) as exc:
                return str(exc)
            dur = len(track) / track.fps if track.fps else 0.0
            if dur > cfg.max_seconds:
                raise HTTPException(422, f"{label}: {dur:.1f} s exceeds the {cfg.max_seconds:.0f} s limit")
            return None
        try:
            info = probe_video(uri)
        except (InputError, ValueError, OSError) as exc:
            return str(exc)
        dur = info.frames / info.fps if info.fps else 0.0
        if dur > cfg.max_seconds:
            raise HTTPException(422, f"{label}: {dur:.1f} s exceeds the {cfg.max_seconds:.0f} s limit")
        if max(info.width, info.height) > cfg.max_side:
            raise HTTPException(422, f"{label}: {info.width}x{info.height} exceeds the {cfg.max_side} px limit")
        return None

    @api.middleware("http")
    async def count(request: HttpRequest, call_next):
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001
            log.exception("unhandled error on %s", request.url.path)
            response = JSONResponse({"detail": "internal error"}, status_code=500)
        metrics.observe_stage("http", time.perf_counter() - start)
        route = request.scope.get("route")
        http_total.labels(route=getattr(route, "path", "other"), code=str(response.status_code)).inc()
        return response

    @api.get("/healthz")
    async def healthz():
        return {"ok": True, "queue": len(active), "queue_size": cfg.queue_size}

    @api.get("/metrics")
    async def metrics_endpoint():
        metrics.set_queue_depth(len(active))
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @api.post("/v1/edits", status_code=202)
    async def create(request: HttpRequest, authorization: Optional[str] = Header(None)):
        ns = auth(authorization)
        if len(active) >= cfg.queue_size:
            raise HTTPException(429, f"queue full ({cfg.queue_size} edits queued or running); retry later",
                                headers={"Retry-After": "5"})
        length = request.headers.get("content-length")
        if length and int(length) > 2 * cfg.max_upload_bytes + (1 << 20):
            raise HTTPException(413, f"request body of {length} bytes exceeds the upload limit")
        edit_id = secrets.token_urlsafe(18)
        active.add(edit_id)  # hold the queue slot from here on (concurrent posts must not all pass the check)
        edir = store.edit_dir(ns, edit_id)
        inputs: dict[str, str] = {}
        try:
            form = await request.form(max_part_size=cfg.max_upload_bytes + 1)
            for label in ("source", "driving"):
                upload, uri = form.get(label), form.get(f"{label}_uri")
                if upload is not None and hasattr(upload, "read"):
                    ext = os.path.splitext(upload.filename or "")[1].lower()[:10] or ".mp4"
                    inputs[label] = storage.join(edir, "inputs", f"{label}{ext}")
                    await save_upload(upload, inputs[label])
                elif uri:
                    if not prefix_allowed(str(uri), cfg.allowed_prefixes):
                        raise HTTPException(403, f"{label}_uri {uri!r} is outside the allowed storage prefixes")
                    inputs[label] = str(uri)
                else:
                    raise HTTPException(422, f"give a '{label}' file or a '{label}_uri'")
            raw = {k: form.get(k) for k in REQUEST_FIELDS if form.get(k) not in (None, "")}
            raw = {**cfg.defaults, **raw, "source": inputs["source"], "driving": inputs["driving"],
                   "request_id": edit_id, "output": storage.join(edir, "result.mp4")}
            if str(raw.get("preview", "")).lower() in ("1", "true", "yes"):
                raw["preview_output"] = storage.join(edir, "preview.mp4")
            raw.pop("preview_output", None)
            try:
                req = parse_row(raw, row=1, out=edir)
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from exc
            errors = [f"{label}: {err}" for label in ("source", "driving")
                      if (err := await asyncio.to_thread(check_limits, inputs[label], label))]
        except BaseException:
            active.discard(edit_id)
            await asyncio.to_thread(store.delete, ns, edit_id)
            raise
        state = {"id": edit_id, "state": "queued", "progress": 0.0, "error": None, "created_at": time.time(),
                 "params": req.params()}
        if errors:
            store.write(ns, edit_id, {**state, "state": "failed", "error": "; ".join(errors)})
            metrics.request_finished("failed")
            active.discard(edit_id)
        else:
            store.write(ns, edit_id, state)

            async def runner():
                try:
                    row = await submit(ns, edit_id, req.to_dict())
                    if isinstance(row, dict) and "status" in row:
                        metrics.record_result_row(row)
                except Exception as exc:  # noqa: BLE001
                    log.exception("edit %s failed in the worker", edit_id)
                    store.update(ns, edit_id, state="failed", error=f"{type(exc).__name__}: {exc}")
                    metrics.request_finished("failed")
                finally:
                    active.discard(edit_id)
            asyncio.get_running_loop().create_task(runner())
        return JSONResponse({"id": edit_id, "status_url": f"/v1/edits/{edit_id}",
                             "video_url": f"/v1/edits/{edit_id}/video"}, status_code=202)

    async def owned(edit_id: str, authorization: Optional[str]) -> tuple[str, dict]:
        """The caller's namespace and the edit's state; 404 for an edit of another token or none."""
        ns = auth(authorization)
        state = await asyncio.to_thread(store.read, ns, edit_id)
        if state is None:
            raise HTTPException(404, "no such edit")
        return ns, state

    @api.get("/v1/edits/{edit_id}")
    async def status(edit_id: str, authorization: Optional[str] = Header(None)):
        _, state = await owned(edit_id, authorization)
        return {k: state.get(k) for k in ("id", "state", "progress", "error", "frames", "fps", "created_at",
                                          "finished_at", "params")}

    @api.get("/v1/edits/{edit_id}/video")
    async def video(edit_id: str, authorization: Optional[str] = Header(None)):
        _, state = await owned(edit_id, authorization)
        if state.get("state") != "succeeded" or not state.get("output"):
            raise HTTPException(409, f"edit is {state.get('state')}; no video")
        fs, path = storage.open_fs(state["output"])

        def chunks():
            with fs.open(path, "rb") as fh:
                while True:
                    b = fh.read(1 << 20)
                    if not b:
                        break
                    yield b
        return StreamingResponse(chunks(), media_type="video/mp4",
                                 headers={"Content-Disposition": f'attachment; filename="{edit_id}.mp4"'})

    @api.delete("/v1/edits/{edit_id}", status_code=204)
    async def delete(edit_id: str, authorization: Optional[str] = Header(None)):
        ns, state = await owned(edit_id, authorization)
        if state.get("state") in ("queued", "running"):
            store.update(ns, edit_id, state="cancelled")
        active.discard(edit_id)
        await asyncio.to_thread(store.delete, ns, edit_id)
        return Response(status_code=204)

    return api


def build_app(cfg: Optional[ServeConfig] = None):
    """The Serve application: an API ingress and a pool of model replicas (``max_ongoing_requests=1``)."""
    from ray import serve

    cfg = cfg or ServeConfig.from_env()
    if not cfg.tokens:
        raise ValueError("no API token configured: set MF_SERVE_TOKENS (comma-separated bearer tokens)")

    @serve.deployment(name="EditWorker", num_replicas=cfg.replicas, max_ongoing_requests=1,
                      max_queued_requests=-1,
                      ray_actor_options={"num_gpus": cfg.gpus_per_replica, "num_cpus": cfg.cpus_per_replica})
    class EditWorker(EditWorkerImpl):
        pass

    holder: dict = {}

    async def submit(ns, edit_id, request):
        if "worker" not in holder:  # inside the API replica: the worker deployment of this same app
            holder["worker"] = serve.get_deployment_handle("EditWorker", serve.get_replica_context().app_name)
        return await holder["worker"].run.remote(ns, edit_id, request)

    api = create_api(cfg, submit)

    @serve.deployment(name="EditAPI", num_replicas=1, max_ongoing_requests=1000,
                      ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class EditAPI:
        def __init__(self, worker):
            holder["worker"] = worker

    return EditAPI.bind(EditWorker.bind(cfg))


def __getattr__(name: str):
    """``jobs.serve:app`` for RayService / ``serve run``: built from the environment on first access."""
    if name == "app":
        return build_app(ServeConfig.from_env())
    raise AttributeError(name)
