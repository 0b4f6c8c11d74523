"""The Ray Serve app for ad-hoc edits (``mf serve``; Serve/RayService import path ``jobs.serve:app_builder``).

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
(:func:`pipelines.batch.single.edit_request`), not a second implementation.

Layout (Ray Serve's documented shape):

- :mod:`~jobs.serve.config` — :class:`ServeConfig`, every setting (from the caller, builder args or MF_SERVE_*).
- :mod:`~jobs.serve.worker` — the ``EditWorker`` deployment: holds the model, one edit at a time.
- :mod:`~jobs.serve.api` — the ``EditAPI`` ingress deployment (``@serve.ingress``); its methods are the routes.
- :mod:`~jobs.serve.inputs` — uploads, allow-listed URIs, parameters and input limits of a new edit.
- :mod:`~jobs.serve.store` — edit states and files in storage, per token namespace.
- :mod:`~jobs.serve.builder` — :func:`build_app` (typed) and :func:`app_builder` (``import_path`` with ``args``).
"""
from jobs.serve.api import EditAPI
from jobs.serve.builder import app_builder, build_app
from jobs.serve.config import ServeConfig
from jobs.serve.store import StateStore, namespace
from jobs.serve.worker import EditWorker

__all__ = ["EditAPI", "EditWorker", "ServeConfig", "StateStore", "app_builder", "build_app", "namespace"]
