"""The typed task that moves between the batch stages: one :class:`WindowTask` per window of a request.

A task carries its :class:`~pipelines.batch.requests.Request` (parsed once, when the manifest is read) and the
:class:`~pipelines.batch.identity.RequestIdentity` of what its output depends on, the
:class:`RequestPlan` the plan stage computed once per request (length, rate, geometry, alignment), the window's span
and frame maps, its status and per-stage :class:`StageTimes`, and — between prepare and edit only — the prepared
arrays as npz bytes. Between Ray Data stages a task travels as one Arrow row of :data:`TASK_SCHEMA` (struct and list
columns, no JSON strings): :meth:`WindowTask.to_row` / :meth:`WindowTask.from_row`.

A request whose plan failed is one task with ``index == PLAN_FAILED`` and ``plan is None``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa

from pipelines.batch.identity import RequestIdentity
from pipelines.batch.requests import Request

PLAN_FAILED = -1  # the index of the single task a failed plan emits
PENDING, SKIPPED, SUCCEEDED, FAILED = "pending", "skipped", "succeeded", "failed"

REQUEST_TYPE = pa.struct([
    ("request_id", pa.string()), ("source", pa.string()), ("driving", pa.string()), ("output", pa.string()),
    ("preview_output", pa.string()), ("steps", pa.int64()), ("cfg", pa.float64()), ("seed", pa.int64()),
    ("camera", pa.bool_()), ("window", pa.int64()), ("overlap", pa.int64()), ("size", pa.int64()),
    ("fps", pa.float64()), ("frame_start", pa.int64()), ("frame_end", pa.int64()), ("preview", pa.bool_()),
    ("length_policy", pa.string()), ("row", pa.int64()),
])
# The alignment transform of pipelines.conditioning.align (every key it may hold; a new key must be added here).
_TRANSFORM_TYPE = pa.struct([
    ("version", pa.int64()), ("mode", pa.string()), ("size", pa.list_(pa.int64())), ("global_scale", pa.float64()),
    ("bone_scale", pa.map_(pa.string(), pa.float64())), ("src_anchor", pa.list_(pa.float64())),
    ("drv_anchor", pa.list_(pa.float64())), ("width_ratio", pa.float64()), ("keep_x", pa.bool_()),
    ("identity", pa.bool_()),
])
_PLAN_TYPE = pa.struct([
    ("frames", pa.int64()), ("fps", pa.string()), ("source_fps", pa.float64()), ("has_audio", pa.bool_()),
    ("audio_offset", pa.float64()), ("resampled", pa.bool_()), ("rotation", pa.int64()), ("rescaled", pa.bool_()),
    ("tone_mapped", pa.bool_()),
    ("geometry", pa.struct([("scale", pa.float64()), ("ox", pa.int64()), ("oy", pa.int64())])),
    ("source_hw", pa.list_(pa.int64())), ("transform", _TRANSFORM_TYPE),
])
_TIMES_TYPE = pa.struct([(n, pa.float64()) for n in (
    "probe", "prepare", "edit", "write", "model", "busy", "edit_started_at", "edit_ended_at", "gpu_memory_peak")])
_IDENTITY_TYPE = pa.map_(pa.string(), pa.string())
INPUTS_TYPE = pa.struct([("source", pa.string()), ("driving", pa.string()), ("key", pa.string())])

TASK_SCHEMA = pa.schema([
    ("request", REQUEST_TYPE), ("inputs", INPUTS_TYPE), ("plan", _PLAN_TYPE), ("window_id", pa.string()),
    ("index", pa.int32()), ("count", pa.int32()), ("start", pa.int64()), ("end", pa.int64()),
    ("source_indices", pa.list_(pa.int64())), ("driving_indices", pa.list_(pa.int64())), ("uri", pa.string()),
    ("status", pa.string()), ("error", pa.string()), ("times", _TIMES_TYPE), ("model_identity", _IDENTITY_TYPE),
    ("prepare_node", pa.string()), ("edit_node", pa.string()), ("payload", pa.large_binary()),
])


@dataclass
class RequestPlan:
    """What the plan stage learns once per request."""

    frames: int  # output frames
    fps: str  # output rate, exact ("30000/1001"): the grid the source is sampled on
    source_fps: float  # the source's nominal rate
    has_audio: bool
    geometry: dict[str, Any]  # pipelines.media.geometry.fit_geometry of the source in the model frame
    source_hw: tuple[int, int]
    transform: dict[str, Any]  # pipelines.conditioning.align transform
    audio_offset: float = 0.0  # seconds into the source file where the first output frame's audio lies
    resampled: bool = False  # the source's stored frames did not lie on the grid (variable rate, another rate asked)
    rotation: int = 0  # the source's display rotation, applied (clockwise degrees)
    rescaled: bool = False  # the source's sample aspect ratio was applied (non-square pixels)
    tone_mapped: bool = False  # the source was HDR (PQ/HLG), tone-mapped to SDR

    def to_row(self) -> dict[str, Any]:
        unknown = set(self.transform) - set(_TRANSFORM_TYPE.names)
        if unknown:
            raise ValueError(f"alignment transform keys not in the task schema: {sorted(unknown)}")
        transform = dict(self.transform)
        if "bone_scale" in transform:
            transform["bone_scale"] = list(transform["bone_scale"].items())
        return {**dataclasses.asdict(self), "source_hw": list(self.source_hw), "transform": transform}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RequestPlan:
        transform = {k: v for k, v in row["transform"].items() if v is not None}
        if "bone_scale" in transform:
            transform["bone_scale"] = dict(transform["bone_scale"])
        return cls(**{**row, "source_hw": tuple(row["source_hw"]), "transform": transform})


@dataclass
class StageTimes:
    """Seconds spent per stage on one window, and the edit's wall-clock span and GPU memory peak."""

    probe: Optional[float] = None  # the request's plan time, shared out over its windows
    prepare: Optional[float] = None
    edit: Optional[float] = None  # inside the edit actor for this window (model, write)
    write: Optional[float] = None
    model: Optional[float] = None  # inside model.edit
    busy: Optional[float] = None
    edit_started_at: Optional[float] = None  # time.time()
    edit_ended_at: Optional[float] = None
    gpu_memory_peak: Optional[float] = None

    def stage_seconds(self) -> dict[str, float]:
        """The per-stage seconds that were measured (the ``mf_stage_seconds`` stages)."""
        return {k: v for k, v in (("probe", self.probe), ("prepare", self.prepare), ("edit", self.edit),
                                  ("write", self.write)) if v is not None}


@dataclass
class WindowTask:
    """One window of one request, as it moves plan → prepare → edit → stitch."""

    request: Request
    inputs: RequestIdentity
    plan: Optional[RequestPlan] = None
    window_id: str = ""
    index: int = PLAN_FAILED
    count: int = 0  # windows of the request
    start: int = 0  # output frames [start, end)
    end: int = 0
    source_indices: list[int] = field(default_factory=list)
    driving_indices: list[int] = field(default_factory=list)
    uri: str = ""  # where the edited frames are written
    status: str = PENDING
    error: Optional[str] = None
    times: StageTimes = field(default_factory=StageTimes)
    model_identity: Optional[dict[str, str]] = None  # the model's identity, once edited
    prepare_node: Optional[str] = None  # Ray node ids of the actors that prepared and edited it
    edit_node: Optional[str] = None
    payload: Optional[bytes] = None  # prepared arrays (npz), between prepare and edit only

    @property
    def pending(self) -> bool:
        return self.status == PENDING

    @property
    def plan_failed(self) -> bool:
        return self.index == PLAN_FAILED

    def fail(self, stage: str, exc: BaseException) -> WindowTask:
        where = stage if self.plan_failed else f"{stage} window {self.index}"
        self.status, self.error, self.payload = FAILED, f"{where}: {error_text(exc)}", None
        return self

    def to_row(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        row.update(request=self.request.to_dict(), inputs=dataclasses.asdict(self.inputs),
                   plan=self.plan.to_row() if self.plan else None, times=dataclasses.asdict(self.times),
                   model_identity=list(self.model_identity.items()) if self.model_identity else None)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WindowTask:
        return cls(**{**row, "request": Request(**row["request"]), "inputs": RequestIdentity(**row["inputs"]),
                      "plan": RequestPlan.from_row(row["plan"]) if row["plan"] else None,
                      "times": StageTimes(**row["times"]),
                      "model_identity": dict(row["model_identity"]) if row["model_identity"] is not None else None})


def tasks_to_table(tasks: list[WindowTask]) -> pa.Table:
    return pa.Table.from_pylist([t.to_row() for t in tasks], schema=TASK_SCHEMA)


def tasks_from_table(table: pa.Table) -> list[WindowTask]:
    return [WindowTask.from_row(r) for r in table.to_pylist()]


def error_text(exc: BaseException) -> str:
    """``Type: first line of the message`` (bounded): the ``error`` of a failed row."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}"[:500]
