"""The Ray Serve app for ad-hoc edits (``mf serve``; Serve/RayService import path ``jobs.serve:app_builder``).

HTTP API (JSON unless stated)::

    POST   /v1/edits               multipart: ``source``/``driving`` files, or ``source_uri``/``driving_uri`` form
                                   fields (allow-listed storage prefixes only), plus request parameters
                                   (steps, guidance_scale (old name cfg), seed, camera, window, overlap, size,
                                   length_policy, preview, fusion, align_mode,
                                   source_subject, driving_subject)
                                   → 202 {"id", "status_url", "video_url"}
    GET    /v1/edits/{id}          → {"id", "state": queued|running|succeeded|failed, "progress", "error", ...}
    GET    /v1/edits/{id}/video    → video/mp4 (409 while not finished)
    DELETE /v1/edits/{id}          → 204 (cancels a queued/running edit and deletes its files; then 404)
    GET    /healthz                → {"ok": true}
    GET    /metrics                → Prometheus text

Every /v1 call needs ``Authorization: Bearer <token>`` with a token from ``MF_SERVE_TOKENS`` (comma-separated);
each token's edits live in their own namespace, so one client cannot read or delete another's. Edit ids are
unguessable (``secrets.token_urlsafe``) and every route checks their form (``[A-Za-z0-9_-]{16,64}``) before it
touches storage: anything else is 404.

Limits (all :class:`ServeConfig` fields, listed in docs/operations.md): the HTTP server first bounds every
request's head (size, count, a deadline), idle connections and bodies (:mod:`~jobs.serve.http_guard`, in Ray Serve's
proxy). A new edit's body is read only for a known token and counted while it streams, chunked or sized: 413 the
moment it passes two uploads' worth, 408 when it stalls or takes too long, 429 while that token already sends
``max_uploads_per_token`` bodies; non-file fields are small and few (413 over the caps); unknown fields are 422; the
queue slot is taken only once the body is complete (429 when the queue or the token's share of it is full). Uploads
must be ``.mp4 .m4v .mov .mkv .webm .avi .gif .webp .png .apng`` (a driving pose track also ``.parquet .json``),
stored as ``source.<ext>``/``driving.<ext>``. Inputs are checked before the answer: videos through the batch path's
normalisation (:func:`pipelines.media.probe_video`: container allow-list, at most 32 streams, the default stream's
packets counted, its first frame decoded), pose tracks by their header; over the duration, resolution or frame
limits, or an edit whose cost (steps × edited frames × (size/512)²) or steps/size/window pass the operator's caps →
422 naming the cap; an input that is no usable video or pose track → 422 with the reason. Storage URIs outside the
allow-list get 403 (``file://`` and server paths are never read unless a prefix explicitly allows them; local paths
are resolved, symlinks included, and checked again). Error texts name the input (``source``/``driving``) and the
reason, never a server path or the namespace. Results are written to storage through fsspec, never kept in memory.
The GPU replicas (``max_ongoing_requests=1``) run the batch pipeline's own per-request code
(:func:`pipelines.batch.single.edit_request`), not a second implementation.

DELETE writes a tombstone before it removes the edit's folder; every writer checks it, the running edit stops
within about one sampler step, and nothing of it is left. A failed edit keeps only its state, whatever failed it
(the worker's own failure, a storage error, the worker process killed); everything of an ended edit, and
tombstones, expire after ``retention_s`` (a bounded sweep on a timer in the API replica). Edits a previous process
left queued or running are re-queued once or failed with the reason when an API replica starts (owner leases, see
:mod:`~jobs.serve.lifecycle`).

Layout (Ray Serve's documented shape):

- :mod:`~jobs.serve.config` — :class:`ServeConfig`, every setting (from the caller, builder args or MF_SERVE_*).
- :mod:`~jobs.serve.worker` — the ``EditWorker`` deployment: holds the model, one edit at a time.
- :mod:`~jobs.serve.api` — the ``EditAPI`` ingress deployment (``@serve.ingress``); its methods are the routes.
- :mod:`~jobs.serve.lifecycle` — failed edits, the owner lease, orphans re-queued or failed after a restart.
- :mod:`~jobs.serve.http_guard` — the HTTP limits of Ray Serve's proxy (head, connections, bodies).
- :mod:`~jobs.serve.limits` — the request-body guard (an ASGI middleware) and the capped form parser.
- :mod:`~jobs.serve.inputs` — uploads, allow-listed URIs, parameters, input limits and cost cap of a new edit;
  client-facing error texts.
- :mod:`~jobs.serve.store` — the edit states (:class:`EditState`, one vocabulary; :func:`edit_state_of`, the one
  mapping from result-row statuses), edit files and tombstones in storage, per token namespace.
- :mod:`~jobs.serve.sweep` — expiry of ended edits and tombstones; orphans of stopped owners.
- :mod:`~jobs.serve.builder` — :func:`build_app` (typed) and :func:`app_builder` (``import_path`` with ``args``).
"""
from jobs.serve.api import EditAPI
from jobs.serve.builder import app_builder, build_app
from jobs.serve.config import ServeConfig
from jobs.serve.store import StateStore, namespace
from jobs.serve.worker import EditWorker

__all__ = ["EditAPI", "EditWorker", "ServeConfig", "StateStore", "app_builder", "build_app", "namespace"]
