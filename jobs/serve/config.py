"""The settings of the Serve app: one :class:`ServeConfig`, filled by the caller, by builder args or from MF_SERVE_*.

Environment variables (an empty variable counts as unset)::

    MF_SERVE_TOKENS            bearer tokens, comma-separated (fallback: MF_SERVE_TOKEN)
    MF_SERVE_ROOT              storage root for uploads, states and results (any fsspec URI)
    MF_SERVE_ALLOWED_PREFIXES  storage URI prefixes a request may name, comma-separated
    MF_SERVE_MAX_UPLOAD_MB     upload limit per file, MiB
    MF_SERVE_MAX_SECONDS       duration limit per input video or pose track
    MF_SERVE_MAX_SIDE          resolution limit (longer side, px)
    MF_SERVE_MAX_FRAMES        frame-count limit per input
    MF_SERVE_MAX_STEPS / MF_SERVE_MAX_SIZE / MF_SERVE_MAX_WINDOW / MF_SERVE_MAX_COST   the cost caps of one edit
    MF_SERVE_QUEUE             edits queued or running at once (per API replica)
    MF_SERVE_QUEUE_PER_TOKEN   of those, at most this many from one token
    MF_SERVE_RETENTION_S       seconds the files of an ended edit (and a deleted edit's tombstone) are kept
    MF_SERVE_WEIGHTS / MF_SERVE_PRESET / MF_SERVE_DTYPE   the model
    MF_SERVE_GPUS / MF_SERVE_CPUS / MF_SERVE_REPLICAS     the model replicas
    MF_SERVE_DEFAULTS          request parameter defaults, JSON (e.g. {"steps": 50})

Every other field (body limits and timeouts, upload concurrency, sweep interval) is set through builder args or the
caller; docs/operations.md lists them all.
"""
import json
import os
from collections.abc import Mapping
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mf_model.config import DEFAULT_PRESET

ENV_VARS = {  # field → environment variable (read as is; the validators below parse lists and JSON)
    "root": "MF_SERVE_ROOT", "allowed_prefixes": "MF_SERVE_ALLOWED_PREFIXES", "max_seconds": "MF_SERVE_MAX_SECONDS",
    "max_side": "MF_SERVE_MAX_SIDE", "max_frames": "MF_SERVE_MAX_FRAMES", "max_steps": "MF_SERVE_MAX_STEPS",
    "max_size": "MF_SERVE_MAX_SIZE", "max_window": "MF_SERVE_MAX_WINDOW", "max_cost": "MF_SERVE_MAX_COST",
    "queue_size": "MF_SERVE_QUEUE", "max_queued_per_token": "MF_SERVE_QUEUE_PER_TOKEN",
    "retention_s": "MF_SERVE_RETENTION_S", "weights": "MF_SERVE_WEIGHTS",
    "preset": "MF_SERVE_PRESET", "dtype": "MF_SERVE_DTYPE", "gpus_per_replica": "MF_SERVE_GPUS",
    "cpus_per_replica": "MF_SERVE_CPUS", "replicas": "MF_SERVE_REPLICAS", "defaults": "MF_SERVE_DEFAULTS",
}


def split_list(value: str) -> tuple[str, ...]:
    """``"a, b,,c"`` → ``("a", "b", "c")``."""
    return tuple(s.strip() for s in value.split(",") if s.strip())


class ServeConfig(BaseModel):
    """Every setting of the Serve app (frozen; Ray ships it to the replicas).

    Lists may also be given as comma-separated strings and ``defaults`` as a JSON string, so the same fields work
    from a Python caller, from ``args:`` of a Serve config file (``jobs.serve:app_builder``) and from ``serve run
    jobs.serve:app_builder key=value``. Unknown fields are errors.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    root: str = "mf_out/serve"  # storage root for uploads, states and results (any fsspec URI)
    tokens: tuple[str, ...] = ()
    allowed_prefixes: tuple[str, ...] = ()  # storage URI prefixes a request may name
    # -- inputs --------------------------------------------------------------------------------------------------
    max_upload_bytes: int = Field(256 * 2**20, gt=0)  # per uploaded file; the body may hold two files + fields
    max_field_bytes: int = Field(16 * 2**10, gt=0)  # per non-file form field (parameters, URIs)
    max_fields: int = Field(32, gt=0)  # non-file form fields per request
    body_idle_s: float = Field(30.0, gt=0)  # a request body that sends nothing for this long gets 408
    body_timeout_s: float = Field(600.0, gt=0)  # a request body not complete after this long gets 408
    max_uploads: int = Field(16, gt=0)  # request bodies being received at once (per API replica)
    max_uploads_per_token: int = Field(4, gt=0)  # of those, from one token
    max_seconds: float = Field(120.0, gt=0)  # per input video or pose track
    max_side: int = Field(1920, gt=0)  # longer side of an input video, px
    max_frames: int = Field(3600, gt=0)  # frames per input video or pose track
    # -- the cost of one edit --------------------------------------------------------------------------------
    max_steps: int = Field(100, gt=0)
    max_size: int = Field(1024, gt=0)  # model resolution (square side, px)
    max_window: int = Field(32, gt=0)  # frames per window
    max_cost: float = Field(300_000.0, gt=0)  # steps × edited frames (windows' overlap counted) × (size / 512)²
    # -- queue and expiry ------------------------------------------------------------------------------------
    queue_size: int = Field(8, gt=0)  # edits queued or running at once (per API replica)
    max_queued_per_token: int = Field(4, gt=0)  # of those, from one token
    retention_s: float = Field(24 * 3600.0, gt=0)  # files of an ended edit and tombstones of deleted ones
    sweep_interval_s: float = Field(300.0, gt=0)  # how often an API replica sweeps expired files
    # -- the model -------------------------------------------------------------------------------------------
    weights: Optional[str] = None
    preset: str = DEFAULT_PRESET
    dtype: Optional[str] = None
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    replicas: int = 1
    defaults: dict[str, Any] = Field(default_factory=dict)  # request parameter defaults (e.g. {"steps": 50})

    @field_validator("tokens", "allowed_prefixes", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return split_list(value) if isinstance(value, str) else value

    @field_validator("defaults", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @property
    def max_body_bytes(self) -> int:
        """The largest request body of a new edit: two files, the form fields and multipart framing."""
        return 2 * self.max_upload_bytes + self.max_fields * (self.max_field_bytes + 512) + 4096

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> "ServeConfig":
        """The MF_SERVE_* variables of ``environ`` (default ``os.environ``) over the defaults, ``overrides`` over
        both. Raises ``ValueError`` (pydantic's ``ValidationError``) for a bad value or an unknown field."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {f: env[var] for f, var in ENV_VARS.items() if env.get(var)}
        tokens = split_list(env.get("MF_SERVE_TOKENS", "")) or split_list(env.get("MF_SERVE_TOKEN", ""))
        if tokens:
            values["tokens"] = tokens
        if env.get("MF_SERVE_MAX_UPLOAD_MB"):
            values["max_upload_bytes"] = int(float(env["MF_SERVE_MAX_UPLOAD_MB"]) * 2**20)
        return cls.model_validate({**values, **overrides})
