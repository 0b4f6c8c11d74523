"""What a request's output depends on, as one key: re-runs reuse work only when that key is unchanged.

The key of a request (:func:`request_identity`) covers the model (:func:`model_key`: preset, dtype and the weights'
content identity), every edit parameter, and the content identity of both inputs
(:func:`pipelines.media.storage.content_identity`: checksum or ETag, else size and modification time). Window ids
derive from it, so a window file of other weights or of a replaced source is never found, and the done marker of a
request records it, so a finished request is skipped only when nothing it depends on changed. Both identities and
the key are recorded in the result manifest.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mf_model.config import RANDOM_WEIGHTS_TAG
from pipelines.batch.config import ModelSpec
from pipelines.batch.requests import Request
from pipelines.media import storage
from pipelines.windows import ids

log = logging.getLogger(__name__)

LOOKUP_THREADS = 16  # content identities are metadata calls (HEAD on object stores): overlap them


@dataclass(frozen=True)
class RequestIdentity:
    source: str  # content identity of the source ("" when it cannot be read: the plan then says why)
    driving: str
    key: str  # hash of the model key, the edit parameters and both content identities


def model_key(spec: ModelSpec) -> str:
    """The model's part of the key: preset, dtype and the content identity of the weights (or of none)."""
    weights = _identity_or_blank(spec.weights) if spec.weights else RANDOM_WEIGHTS_TAG
    return ids.params_hash({"preset": spec.preset, "dtype": spec.dtype, "weights": spec.weights or "",
                            "weights_content": weights})


def _identity_or_blank(uri: str) -> str:
    try:
        return storage.content_identity(uri)
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable input fails later, with its own error
        log.debug("no content identity for %s: %s", uri, exc)
        return ""


def request_identity(req: Request, model: str) -> RequestIdentity:
    src, drv = _identity_or_blank(req.source), _identity_or_blank(req.driving)
    key = ids.params_hash({"model": model, "params": req.edit_params(), "source": src, "driving": drv})
    return RequestIdentity(src, drv, key)


def request_identities(reqs: list[Request], model: str) -> list[RequestIdentity]:
    """:func:`request_identity` of many requests, their metadata lookups overlapped."""
    if len(reqs) <= 1:
        return [request_identity(r, model) for r in reqs]
    with ThreadPoolExecutor(min(LOOKUP_THREADS, len(reqs))) as pool:
        return list(pool.map(lambda r: request_identity(r, model), reqs))
