"""Deterministic identifiers: the same request and parameters always give the same IDs, so re-runs are idempotent.

- :func:`params_hash` — a stable hash of a parameter mapping (canonical JSON, key order and float spelling fixed).
- :func:`request_id` — ``uuid5(NAMESPACE, "request|<source>|<driving>|<params_hash>")``.
- :func:`window_id` — ``uuid5(NAMESPACE, "window|<request_id>|<source>|<start>:<end>|<params_hash>")``.

The namespace is fixed forever: changing it (or the key layout) would make every finished run look unfinished.
"""
from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

NAMESPACE = uuid.UUID("6d1f3c2e-8a4b-5c7d-9e0f-4d6f1a2b3c4e")


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, Fraction):
        return f"{value.numerator}/{value.denominator}"
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)  # 3.0 and 3 hash the same
        return repr(float(value))
    if hasattr(value, "item"):  # numpy scalar
        return _canonical(value.item())
    return str(value)


def canonical_json(params: Mapping[str, Any]) -> str:
    """Canonical JSON of a parameter mapping: sorted keys, no whitespace, stable number spelling."""
    return json.dumps(_canonical(params), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def params_hash(params: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of ``params``."""
    return hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()[:16]


def request_id(source: str, driving: str, params: Mapping[str, Any]) -> str:
    """Deterministic request id from the source URI, the driving URI and the parameters."""
    return str(uuid.uuid5(NAMESPACE, f"request|{source}|{driving}|{params_hash(params)}"))


def window_id(request_id: str, source: str, start: int, end: int, params: Mapping[str, Any]) -> str:
    """Deterministic id of the window ``[start, end)`` of a request (changes with any edit parameter)."""
    return str(uuid.uuid5(NAMESPACE, f"window|{request_id}|{source}|{int(start)}:{int(end)}|{params_hash(params)}"))
