"""The settings of the Serve app: one :class:`ServeConfig`, filled by the caller, by builder args or from MF_SERVE_*.

Environment variables (an empty variable counts as unset)::

    MF_SERVE_TOKENS            bearer tokens, comma-separated (fallback: MF_SERVE_TOKEN)
    MF_SERVE_ROOT              storage root for uploads, states and results (any fsspec URI)
    MF_SERVE_ALLOWED_PREFIXES  storage URI prefixes a request may name, comma-separated
    MF_SERVE_MAX_UPLOAD_MB     upload limit per file, MiB
    MF_SERVE_MAX_SECONDS       duration limit per input video
    MF_SERVE_MAX_SIDE          resolution limit (longer side, px)
    MF_SERVE_QUEUE             edits queued or running at once (per API replica)
    MF_SERVE_WEIGHTS / MF_SERVE_PRESET / MF_SERVE_DTYPE   the model
    MF_SERVE_GPUS / MF_SERVE_CPUS / MF_SERVE_REPLICAS     the model replicas
    MF_SERVE_DEFAULTS          request parameter defaults, JSON (e.g. {"steps": 50})
"""
import json
import os
from collections.abc import Mapping
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_VARS = {  # field → environment variable (read as is; the validators below parse lists and JSON)
    "root": "MF_SERVE_ROOT", "allowed_prefixes": "MF_SERVE_ALLOWED_PREFIXES", "max_seconds": "MF_SERVE_MAX_SECONDS",
    "max_side": "MF_SERVE_MAX_SIDE", "queue_size": "MF_SERVE_QUEUE", "weights": "MF_SERVE_WEIGHTS",
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
    max_upload_bytes: int = 256 * 2**20
    max_seconds: float = 120.0
    max_side: int = 1920
    queue_size: int = 8  # edits queued or running at once (per API replica)
    weights: Optional[str] = None
    preset: str = "tiny"
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
