"""What a request's output depends on, as one key: re-runs reuse work only when that key is unchanged.

The key of a request (:func:`request_identity`) covers the model (:func:`model_key`: preset, dtype and the weights'
content identity), every edit parameter (:meth:`~pipelines.batch.requests.Request.edit_params`), the run's options
that change what is written (:func:`output_options`: pose backend, fit mode, crossfade, output scale, encoder
settings), the conditioning's version (:data:`pipelines.conditioning.CONDITIONING_VERSION`: a new alignment rule
is a new key) and the content identity of both inputs (:func:`pipelines.media.storage.content_identity`: checksum or
ETag, else size and modification time). Window ids derive from it, so a window file of other weights, another pose
backend or a replaced source is never found, and the done marker of a request records it, so a finished request is
skipped only when nothing it depends on changed. Both identities and the key are recorded in the result manifest.

An option that changes neither the window files' frames nor the video (``max_retries``, ``compress_windows``,
``keep_windows``) stays out of the key: changing it reuses everything. A new :class:`ProcessingOptions` field goes
into :data:`OUTPUT_OPTIONS` or :data:`NON_OUTPUT_OPTIONS` (a test checks that every field is in one of them).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mf_model.config import RANDOM_WEIGHTS_TAG
from pipelines.batch.config import ModelSpec, ProcessingOptions
from pipelines.batch.requests import Request
from pipelines.conditioning import CONDITIONING_VERSION
from pipelines.media import storage
from pipelines.windows import ids

log = logging.getLogger(__name__)

# the ProcessingOptions that change the written windows (pose_backend, fit_mode) or the video (the rest)
OUTPUT_OPTIONS = ("pose_backend", "fit_mode", "crossfade", "output_scale", "encode_preset", "encode_crf")
# and those that do not: retries, npz compression (same arrays), what is kept after the commit
NON_OUTPUT_OPTIONS = ("max_retries", "compress_windows", "keep_windows")


@dataclass(frozen=True)
class RequestIdentity:
    source: str  # content identity of the source ("" when it cannot be read: the plan then says why)
    driving: str
    key: str  # hash of the model key, the edit parameters, the output options and both content identities


def model_key(spec: ModelSpec) -> str:
    """The model's part of the key: preset, dtype and the content identity of the weights (or of none)."""
    weights = _identity_or_blank(spec.weights) if spec.weights else RANDOM_WEIGHTS_TAG
    return ids.params_hash({"preset": spec.preset, "dtype": spec.dtype, "weights": spec.weights or "",
                            "weights_content": weights})


def output_options(processing: ProcessingOptions) -> dict[str, Any]:
    """The run's part of the key: the :data:`OUTPUT_OPTIONS` of ``processing``."""
    return {name: getattr(processing, name) for name in OUTPUT_OPTIONS}


def _identity_or_blank(uri: str) -> str:
    try:
        return storage.content_identity(uri)
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable input fails later, with its own error
        log.debug("no content identity for %s: %s", uri, exc)
        return ""


def request_identity(req: Request, model: str, processing: ProcessingOptions) -> RequestIdentity:
    """The identity of ``req`` edited by the model of key ``model`` (:func:`model_key`) in a run of ``processing``."""
    src, drv = _identity_or_blank(req.source), _identity_or_blank(req.driving)
    key = ids.params_hash({"model": model, "params": req.edit_params(), "options": output_options(processing),
                           "source": src, "driving": drv, "conditioning": CONDITIONING_VERSION})
    return RequestIdentity(src, drv, key)
