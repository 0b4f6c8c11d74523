"""Cancellation of a request: the one type every layer raises and catches.

A caller that can cancel work (the Serve worker, on a client's ``DELETE``) passes a :data:`Cancel` callable down to
the stage functions; they call :func:`check_cancel` between sampler steps and before every write, and
:class:`Cancelled` unwinds to the caller (it is never turned into a failed row). Storage that refuses a write
because the request is gone (the Serve store's tombstone) raises the same type, so one ``except Cancelled`` covers
both.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Optional

Cancel = Callable[[], bool]  # returns True once the request is cancelled


class Cancelled(Exception):
    """The request was cancelled (or deleted): stop, write nothing more, report no failure."""


def check_cancel(cancel: Optional[Cancel]) -> None:
    """Raise :class:`Cancelled` when ``cancel()`` is true."""
    if cancel is not None and cancel():
        raise Cancelled()
