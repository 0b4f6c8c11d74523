"""Request bodies under limits while they stream: :class:`BodyGuard` (an ASGI middleware) and :func:`read_form`.

Ray Serve's proxy and the replica's receive both pull a request body as fast as the client sends it, whatever the
app reads, so the limits have to hold at the first ``receive`` of the app. :class:`BodyGuard` does that for every
request:

- it asks an :class:`Admission` policy first (the API's: auth for ``POST /v1/edits``, the number of bodies being
  received at once, per token and in all, room in the queue) and answers its refusal (401, 429) without reading a
  byte;
- a ``Content-Length`` over the limit is refused at once; otherwise it counts the bytes of the ``http.request``
  messages as they arrive — chunked and sized bodies alike — into a spool (memory up to
  :data:`SPOOL_MEMORY_BYTES`, then a temporary file, never more than the limit) and answers 413 the moment the
  count passes the limit, without reading further;
- a body that sends nothing for ``idle_s``, or is not complete after ``total_s``, gets 408;
- refusals carry ``Connection: close``, so the HTTP server stops reading that connection;
- only a complete body reaches the app (replayed from the spool): the app's work — the queue slot included —
  starts once the body is in.

What Ray Serve's proxy (and the replica's own receive task) read ahead of the app is outside its reach: they pull a
body as fast as the client sends it. The proxy holds its own outer bound (:mod:`jobs.serve.http_guard`: the same
body limit, the head, idle connections); a front proxy with request buffering on disk removes the rest.

:func:`read_form` parses the spooled body with small caps on non-file fields and on field and file counts.
"""
from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from fastapi import HTTPException
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as HttpRequest

SPOOL_MEMORY_BYTES = 1 << 20  # body bytes kept in memory before the spool moves to a temporary file
REPLAY_CHUNK = 1 << 16
MAX_FILES = 2  # source and driving

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class BodyLimits:
    """What one request body may be: at most ``max_bytes``, no pause over ``idle_s``, complete within ``total_s``;
    ``release`` is called once the request is done (frees the admission's slot)."""

    max_bytes: int
    idle_s: float
    total_s: float
    release: Callable[[], None] = field(default=lambda: None)


class Admission(Protocol):
    def admit(self, scope: Scope) -> BodyLimits:
        """The limits of this request's body; raises ``HTTPException`` to refuse it before reading."""


class BodyRefused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class ClientGone(Exception):
    """The client disconnected before its body was complete."""


def content_length(scope: Scope) -> Optional[int]:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def refuse(send: Send, status: int, detail: str, headers: Optional[dict[str, str]] = None) -> None:
    """A JSON error response (refused bodies add ``Connection: close``: the HTTP server stops reading them)."""
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def read_body(receive: Receive, limits: BodyLimits, spool: Any) -> int:
    """Read a whole body into ``spool``, counting its bytes; :class:`BodyRefused` (413, 408) as soon as a limit
    is passed, :class:`ClientGone` on a disconnect. Returns its size."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.total_s
    size = 0
    while True:
        wait = min(limits.idle_s, deadline - loop.time())
        if wait <= 0:
            raise BodyRefused(408, f"request body not complete within {limits.total_s:g} s")
        try:
            message = await asyncio.wait_for(receive(), wait)
        except asyncio.TimeoutError:
            raise BodyRefused(408, f"request body stalled (nothing received for {wait:.3g} s)") from None
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limits.max_bytes:
            raise BodyRefused(413, f"request body exceeds the {limits.max_bytes} byte limit")
        if chunk:
            spool.write(chunk)
        if not message.get("more_body", False):
            return size


def _replay(spool: Any, size: int, receive: Receive) -> Receive:
    """The ``receive`` the app gets: the spooled body in chunks, then the connection's own messages (disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        chunk = spool.read(REPLAY_CHUNK)
        sent = spool.tell() >= size
        return {"type": "http.request", "body": chunk, "more_body": not sent}

    return replayed


class BodyGuard:
    """ASGI middleware: every request body within its :class:`Admission`'s limits before the app sees it (see the
    module docstring). ``admission`` is called per request (it may be None while the app is starting: then the
    request passes unguarded)."""

    def __init__(self, app: Any, admission: Callable[[], Optional[Admission]]):
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy = self.admission() if scope["type"] == "http" else None
        if policy is None:
            await self.app(scope, receive, send)
            return
        try:
            limits = policy.admit(scope)
        except StarletteHTTPException as exc:
            await refuse(send, exc.status_code, str(exc.detail), {**(exc.headers or {}), "Connection": "close"})
            return
        try:
            await self._guarded(scope, receive, send, limits)
        finally:
            limits.release()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, limits: BodyLimits) -> None:
        declared = content_length(scope)
        if declared is not None and declared > limits.max_bytes:
            await refuse(send, 413, f"request body of {declared} bytes exceeds the {limits.max_bytes} byte limit",
                          {"Connection": "close"})
            return
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
            try:
                size = await read_body(receive, limits, spool)
            except BodyRefused as exc:
                await refuse(send, exc.status, exc.detail, {"Connection": "close"})
                return
            except ClientGone:
                return
            spool.seek(0)
            await self.app(scope, _replay(spool, size, receive), send)


async def read_form(request: HttpRequest, max_fields: int, max_field_bytes: int) -> FormData:
    """The request's form (multipart or urlencoded) with at most :data:`MAX_FILES` files, ``max_fields`` other
    fields of at most ``max_field_bytes`` each; 413 over a cap, 400 for a malformed body."""
    try:
        return await request.form(max_files=MAX_FILES, max_fields=max_fields, max_part_size=max_field_bytes)
    except StarletteHTTPException as exc:
        detail = str(exc.detail)
        if exc.status_code == 400 and ("maximum" in detail.lower() or "too many" in detail.lower()):
            raise HTTPException(413, detail) from None
        raise HTTPException(exc.status_code, detail) from None
