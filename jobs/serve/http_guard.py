"""Limits held by Ray Serve's HTTP proxy itself, before a request reaches an app: header size and count, slow
headers, idle connections, stalled bodies, the number of connections and the body size.

Ray Serve's proxy runs Uvicorn with ``http="auto"`` (httptools), which buffers request headers of any size and has
no deadline for a request's head, and the proxy pulls every body as fast as the client sends it, whatever the app
reads. Ray lets a cluster add ASGI middlewares to every proxy through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``;
:func:`proxy_middlewares` is that callback (:data:`jobs.runtime.PROXY_CALLBACK`, set by :func:`jobs.runtime.connect_ray`
for a local Ray and in the shipped cluster configs). Called once in each proxy process, it

- makes Uvicorn's ``auto`` protocol :class:`GuardedH11Protocol`: h11, which refuses (400, connection closed) a
  request head over ``max_header_bytes`` while it arrives, plus a deadline for the head (``header_timeout_s``, from
  the connection's start or the previous response: slow-header clients and idle connections are closed), an idle
  limit on a body being received (``body_idle_s``) and a cap on open connections (``max_connections``: 503 over it);
- returns :class:`RequestCap`: more than ``max_headers`` headers get 431; a body declared over ``max_body_bytes``
  gets 413 at once, one that passes it while it streams (chunked) gets 413 the moment it does, the connection is
  closed, and the app is told the client left.

The API's own :class:`~jobs.serve.limits.BodyGuard` keeps the exact per-request limits (auth first, per-field caps);
this layer is the outer bound. The settings come from the proxy's environment (:meth:`GuardConfig.from_env`); the
body cap defaults to the API's body limit from the same ``MF_SERVE_*`` variables. What needs a front proxy, and
its settings, is in docs/operations.md.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from jobs.serve.limits import content_length, refuse

log = logging.getLogger("mf.serve.http")

PROTOCOL = "jobs.serve.http_guard:GuardedH11Protocol"
CLOSE = {"Connection": "close"}  # every refusal closes the connection: the server stops reading it
ENV_VARS = {  # field → environment variable of the proxy's process
    "max_header_bytes": "MF_HTTP_MAX_HEADER_BYTES", "max_headers": "MF_HTTP_MAX_HEADERS",
    "header_timeout_s": "MF_HTTP_HEADER_TIMEOUT_S", "body_idle_s": "MF_HTTP_BODY_IDLE_S",
    "max_connections": "MF_HTTP_MAX_CONNECTIONS", "max_body_bytes": "MF_HTTP_MAX_BODY_BYTES",
}


@dataclass(frozen=True)
class GuardConfig:
    """The proxy's limits (see the module docstring)."""

    max_header_bytes: int = 32 * 2**10  # request line and headers
    max_headers: int = 100
    header_timeout_s: float = 15.0
    body_idle_s: float = 60.0  # above the API's own body_idle_s (30 s), which answers 408 first
    max_connections: int = 2048
    max_body_bytes: Optional[int] = None  # None: the API's limit (ServeConfig.max_body_bytes from MF_SERVE_*)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> GuardConfig:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            if env.get(var):
                kind = float if name.endswith("_s") else int
                values[name] = kind(env[var])
        if "max_body_bytes" not in values:
            from jobs.serve.config import ServeConfig

            values["max_body_bytes"] = ServeConfig.from_env(env).max_body_bytes
        cfg = cls(**values)
        if min(cfg.max_header_bytes, cfg.max_headers, cfg.header_timeout_s, cfg.body_idle_s, cfg.max_connections,
               cfg.max_body_bytes or 0) <= 0:
            raise ValueError(f"HTTP guard settings must be positive: {cfg}")
        return cfg


_config: Optional[GuardConfig] = None


def installed() -> Optional[GuardConfig]:
    """The settings the guard runs with in this process (None: not installed)."""
    return _config


def proxy_middlewares() -> list:
    """Ray Serve's proxy callback: install :class:`GuardedH11Protocol` as Uvicorn's ``auto`` protocol and return
    the :class:`RequestCap` middleware."""
    from starlette.middleware import Middleware
    from uvicorn.config import HTTP_PROTOCOLS

    global _config
    _config = GuardConfig.from_env()
    HTTP_PROTOCOLS["auto"] = PROTOCOL
    log.info("HTTP guard in this proxy: %s", _config)
    return [Middleware(RequestCap, max_headers=_config.max_headers, max_body_bytes=_config.max_body_bytes)]


class GuardedH11Protocol(H11Protocol):
    """Uvicorn's h11 protocol with a bounded head, a deadline for it, an idle limit on bodies and a connection cap
    (the settings of :func:`installed`, defaults where the guard was not installed)."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        guard = _config or GuardConfig()
        if config.limit_concurrency is None:
            config.limit_concurrency = guard.max_connections
        super().__init__(config, *args, **kwargs)
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=guard.max_header_bytes)
        self.guard = guard
        self._deadline: Any = None  # the head's deadline timer
        self._idle: Any = None  # the body's idle timer

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_deadline()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._receiving_body():
            self._arm_idle()
        elif self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def handle_events(self) -> None:
        super().handle_events()
        if self._deadline is not None and self.conn.their_state is not h11.IDLE:
            self._deadline.cancel()  # the head is in (or the connection is done)
            self._deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state in (h11.IDLE, h11.DONE):
            self._arm_deadline()  # the next request's head, on a kept-alive connection

    # -- timers --------------------------------------------------------------------------------------------------
    def _receiving_body(self) -> bool:
        return self.cycle is not None and self.cycle.more_body and not self.cycle.response_complete

    def _arm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.guard.header_timeout_s, self._close, "request head")

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.loop.call_later(self.guard.body_idle_s, self._close_if_stalled)

    def _close_if_stalled(self) -> None:
        self._idle = None
        if self._receiving_body():
            self._close("request body")

    def _close(self, what: str) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("HTTP guard: closed %s (%s not received in time)", self.client, what)
            self.transport.close()

    def _cancel(self) -> None:
        for timer in (self._deadline, self._idle):
            if timer is not None:
                timer.cancel()
        self._deadline = self._idle = None


class RequestCap:
    """ASGI middleware of the proxy: header count and body size (see the module docstring)."""

    def __init__(self, app: Any, max_headers: int, max_body_bytes: int):
        self.app = app
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        if len(headers) > self.max_headers:
            await refuse(send, 431, f"more than {self.max_headers} request headers", CLOSE)
            return
        declared = content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await refuse(send, 413, f"request body of {declared} bytes exceeds the {self.max_body_bytes} byte "
                                    f"limit", CLOSE)
            return
        await _Capped(self, receive, send).run(scope)


class _Capped:
    """One request under :class:`RequestCap`: its body counted as it arrives."""

    def __init__(self, cap: RequestCap, receive: Any, send: Any):
        self.cap, self._receive, self._send = cap, receive, send
        self.size = 0
        self.started = False  # the app's response started
        self.refused = False

    async def run(self, scope: dict) -> None:
        await self.cap.app(scope, self.receive, self.send)

    async def receive(self) -> dict:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.cap.max_body_bytes:
                self.refused = True
                if not self.started:
                    await refuse(self._send, 413, f"request body exceeds the {self.cap.max_body_bytes} byte limit",
                                 CLOSE)
                return {"type": "http.disconnect"}  # the app stops; the closed connection stops the reading
        return message

    async def send(self, message: dict) -> None:
        if self.refused:
            return  # the 413 went out; what the app answers to the disconnect is dropped
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)
