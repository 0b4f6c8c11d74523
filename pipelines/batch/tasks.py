"""The typed rows that move between the batch stages: a :class:`RequestRow` into plan, then one :class:`WindowTask`
per window of a request.

A task carries its :class:`~pipelines.batch.requests.Request` (parsed once, when the manifest is read) and its
``identity``, the :class:`~pipelines.batch.identity.RequestIdentity` of what its output depends on (content key),
the :class:`RequestPlan` the plan stage computed once per request (length, rate, geometry, alignment), the window's
span and frame maps, its status and per-stage :class:`StageTimes`, and — between prepare and edit only — the prepared
arrays as npz bytes. Between Ray Data stages a row travels as one Arrow row (struct and list columns, no JSON
strings): a request of :data:`REQUEST_SCHEMA`, a task of :data:`TASK_SCHEMA` (:func:`rows_to_table` /
:func:`rows_from_table`; for tasks :func:`tasks_to_table` / :func:`tasks_from_table`). The schemas are derived
from these dataclasses (and :class:`~pipelines.batch.requests.Request`,
:class:`~pipelines.conditioning.align.AlignTransform`) by :mod:`pipelines.batch.arrow_types`: a field's Arrow type
is declared on the field, nowhere else.

A request whose plan failed is one task with ``index == PLAN_FAILED`` and ``plan is None``; a request an earlier run
finished (the plan stage found its done marker under the same content key) is one ``skipped`` task with
``index == REQUEST_DONE`` carrying its result row (``result``).

A ``fused`` request (``Request.fusion``) moves as one task per fusion group (``mf_model.fusion_plan.fusion_groups``):
its ``group`` lists the member windows (:class:`GroupWindow`: index, span, window id, file), its ``start``/``end``,
frame maps and ``index`` (the first member's) cover the whole group, ``window_id`` is the group's id and ``uri`` its
path (never a window file: each member has its own; the group's edit attempt counter sits beside it); ``count`` is
then the request's number of groups. A crossfade task has an empty ``group``. :attr:`WindowTask.members` gives a
task's windows either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa

from pipelines.batch.arrow_types import arrow_field, arrow_schema, arrow_struct, from_arrow, to_arrow
from pipelines.batch.identity import RequestIdentity
from pipelines.batch.requests import Request
from pipelines.batch.results import ResultRow
from pipelines.batch.status import FAILED, PENDING
from pipelines.conditioning.align import AlignTransform
from pipelines.conditioning.poses.subject import SubjectTrack

PLAN_FAILED = -1  # the index of the single task a failed plan emits
REQUEST_DONE = -2  # the index of the single task of a request an earlier run finished (its row in ``result``)

REQUEST_TYPE = arrow_struct(Request)
IDENTITY_TYPE = arrow_struct(RequestIdentity)
_GEOMETRY_TYPE = pa.struct([("scale", pa.float64()), ("ox", pa.int64()), ("oy", pa.int64())])  # fit_geometry's


@dataclass(kw_only=True)  # keyword-only: the fields are declared in the Arrow struct's order, defaults or not
class RequestPlan:
    """What the plan stage learns once per request."""

    frames: int  # output frames
    fps: str  # output rate, exact ("30000/1001"): the grid the source is sampled on
    source_fps: float  # the source's nominal rate
    has_audio: bool
    audio_offset: float = 0.0  # seconds into the source file where the first output frame's audio lies
    resampled: bool = False  # the source's stored frames did not lie on the grid (variable rate, another rate asked)
    rotation: int = 0  # the source's display rotation, applied (clockwise degrees)
    rescaled: bool = False  # the source's sample aspect ratio was applied (non-square pixels)
    tone_mapped: bool = False  # the source was HDR (PQ/HLG), tone-mapped to SDR
    # pipelines.media.geometry.fit_geometry of the source in the model frame
    geometry: dict[str, Any] = arrow_field(_GEOMETRY_TYPE)
    source_hw: tuple[int, int]
    transform: AlignTransform

    def to_row(self) -> dict[str, Any]:
        return to_arrow(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RequestPlan:
        return from_arrow(cls, row)


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
class GroupWindow:
    """One window of a fused group task: its place in the request's plan and its file."""

    index: int = arrow_field(pa.int32(), default=0)
    start: int = 0  # output frames [start, end)
    end: int = 0
    window_id: str = ""
    uri: str = ""


@dataclass
class WindowTask:
    """One window of one request (or, in fused mode, one group of its windows), as it moves plan → prepare → edit →
    stitch."""

    request: Request
    identity: RequestIdentity  # what the request's output depends on (its content key)
    plan: Optional[RequestPlan] = None
    window_id: str = ""
    index: int = arrow_field(pa.int32(), default=PLAN_FAILED)
    count: int = arrow_field(pa.int32(), default=0)  # tasks of the request (windows; groups in fused mode)
    start: int = 0  # output frames [start, end)
    end: int = 0
    source_indices: list[int] = field(default_factory=list)
    driving_indices: list[int] = field(default_factory=list)
    uri: str = ""  # where the edited frames are written (a group's members have their own files)
    group: list[GroupWindow] = field(default_factory=list)  # a fused group's windows, in frame order; else empty
    # the chosen people (Request.source_subject / driving_subject) over this task's frames (fitted pixels)
    source_subject: Optional[SubjectTrack] = None
    driving_subject: Optional[SubjectTrack] = None
    status: str = PENDING
    error: Optional[str] = None
    times: StageTimes = field(default_factory=StageTimes)
    model_identity: Optional[dict[str, str]] = None  # the model's identity, once edited
    prepare_node: Optional[str] = None  # Ray node ids of the actors that prepared and edited it
    edit_node: Optional[str] = None
    payload: Optional[bytes] = arrow_field(pa.large_binary(), default=None)  # prepared arrays (npz), prepare → edit
    result: Optional[ResultRow] = None  # a finished request's row (REQUEST_DONE): skipped, found by the plan stage

    @property
    def pending(self) -> bool:
        return self.status == PENDING

    @property
    def plan_failed(self) -> bool:
        return self.index == PLAN_FAILED

    @property
    def request_done(self) -> bool:
        return self.index == REQUEST_DONE

    @property
    def fused(self) -> bool:
        return bool(self.group)

    @property
    def members(self) -> list[GroupWindow]:
        """The windows this task edits: its group's, or itself as one window."""
        if self.group:
            return list(self.group)
        return [GroupWindow(index=self.index, start=self.start, end=self.end, window_id=self.window_id, uri=self.uri)]

    def fail(self, stage: str, exc: BaseException) -> WindowTask:
        if self.plan_failed:
            where = stage
        elif self.group:
            where = f"{stage} windows {self.group[0].index}-{self.group[-1].index} (fused group)"
        else:
            where = f"{stage} window {self.index}"
        self.status, self.error, self.payload = FAILED, f"{where}: {error_text(exc)}", None
        return self

    def to_row(self) -> dict[str, Any]:
        """The task as a row of :data:`TASK_SCHEMA`."""
        return to_arrow(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WindowTask:
        return from_arrow(cls, row)


@dataclass
class RequestRow:
    """The plan stage's input: one request to do; its identity is looked up by the plan stage where not given."""

    request: Request
    identity: Optional[RequestIdentity] = None


TASK_SCHEMA = arrow_schema(WindowTask)
REQUEST_SCHEMA = arrow_schema(RequestRow)


def rows_to_table(rows: list[Any], schema: pa.Schema) -> pa.Table:
    """Dataclass instances as a table of ``schema`` (:func:`~pipelines.batch.arrow_types.arrow_schema` of their
    class)."""
    return pa.Table.from_pylist([to_arrow(r) for r in rows], schema=schema)


def rows_from_table(cls: type, table: pa.Table) -> list[Any]:
    """A table of ``arrow_schema(cls)`` back as ``cls`` instances."""
    return [from_arrow(cls, r) for r in table.to_pylist()]


def tasks_to_table(tasks: list[WindowTask]) -> pa.Table:
    return pa.Table.from_pylist([t.to_row() for t in tasks], schema=TASK_SCHEMA)


def tasks_from_table(table: pa.Table) -> list[WindowTask]:
    return rows_from_table(WindowTask, table)


def requests_table(rows: list[RequestRow]) -> pa.Table:
    """The plan stage's input block."""
    return rows_to_table(rows, REQUEST_SCHEMA)


def error_text(exc: BaseException) -> str:
    """``Type: first line of the message`` (bounded): the ``error`` of a failed row."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}"[:500]
