"""``mf serve``: run the Ray Serve edit endpoint (see :mod:`jobs.serve` for the HTTP API).

Ray is set up by :func:`jobs.runtime.connect_ray` before anything imports it, as in every other command: a local Ray
gets mf's token set-up (a token in this process's environment, inherited by the Ray it starts; no token file).
"""
from __future__ import annotations

import logging
import os
import signal
import threading

from mf_model.config import DEFAULT_PRESET

log = logging.getLogger("mf.serve")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve ad-hoc edits over HTTP (Ray Serve)",
                       description="Starts (or joins, with --address) a Ray cluster and serves POST /v1/edits, "
                                   "GET /v1/edits/{id}[/video], DELETE /v1/edits/{id}, /healthz and /metrics. "
                                   "Tokens come from MF_SERVE_TOKENS; other settings default to MF_SERVE_* "
                                   "environment variables.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the endpoint "
                        "to the network — put it behind a proxy with TLS and a request body limit)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--root", default=None, help="storage root URI for uploads and results (MF_SERVE_ROOT)")
    p.add_argument("--weights", default=None,
                   help=f"model weights (MF_SERVE_WEIGHTS); default: the {DEFAULT_PRESET} preset")
    p.add_argument("--queue", type=int, default=None, help="edits queued or running at once (MF_SERVE_QUEUE)")
    p.add_argument("--replicas", type=int, default=None, help="model replicas (MF_SERVE_REPLICAS)")
    p.add_argument("--gpus-per-replica", type=float, default=None, help="(MF_SERVE_GPUS)")
    p.set_defaults(func=run)


def run(args) -> int:
    from jobs.runtime import connect_ray

    if not (os.environ.get("MF_SERVE_TOKENS") or os.environ.get("MF_SERVE_TOKEN")):
        raise ValueError("no API token configured: set MF_SERVE_TOKENS (comma-separated bearer tokens)")
    connect_ray(args.address)  # first: Ray is imported below, after mf's own token set-up for a local Ray
    from ray import serve

    from jobs.serve import ServeConfig, build_app

    overrides = {"root": args.root, "weights": args.weights, "queue_size": args.queue, "replicas": args.replicas,
                 "gpus_per_replica": args.gpus_per_replica}
    cfg = ServeConfig.from_env(**{k: v for k, v in overrides.items() if v is not None})
    app = build_app(cfg)
    stop = threading.Event()  # SIGTERM stops cleanly from here on (Ray's own handler would abort the process)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app, name="mf", route_prefix="/")
    print(f"serving on http://{args.host}:{args.port} (storage {cfg.root}); Ctrl-C stops", flush=True)
    if args.host not in LOOPBACK:
        print(f"note: {args.host} accepts connections from other machines: put TLS and a request body limit in "
              f"front of it", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    try:
        serve.shutdown()
    except Exception as exc:  # noqa: BLE001 - e.g. the local Ray was stopped with us (Ctrl-C to the whole group)
        log.warning("serve shutdown: %s", exc)
    return 0
