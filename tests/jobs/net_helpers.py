"""Local network helpers for the tests: free ports on 127.0.0.1, and the Serve app started over real HTTP."""
from __future__ import annotations

import socket
import time

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_app(cfg, port: int, attempts: int = 150) -> str:
    """Deploy ``jobs.serve.build_app(cfg)`` on ``port`` and wait until ``/healthz`` answers; the base URL."""
    from ray import serve

    from jobs.serve import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="mf", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    for _ in range(attempts):
        try:
            if requests.get(base + "/healthz", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    return base
