"""The Arrow schemas derived from the dataclasses (:mod:`pipelines.batch.arrow_types`) are exactly the schemas the
pipeline wrote by hand before: literal copies of those are kept here, field order and nullability included (the
result manifest is read by users; the task schema moves windows between Ray Data stages). One name changed since:
the request identity column of the task and plan-input schemas, ``inputs`` then, is ``identity``; and the fused
long-video mode (issue 31) added ``fusion`` to the request struct and the result manifest and ``group`` (a fused
group's member windows) to the task schema; the alignment and subject columns (issue 30) added ``align_mode``,
``source_subject`` and ``driving_subject`` to the request struct and the two subjects' tracks to the task schema;
the plan stage's done check (issue 29) the ``result`` of a finished request to the task schema.
And the helper
itself: hints → Arrow types, per-field declarations, the value round trip; the alignment transform's dict
boundary."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

import pyarrow as pa
import pytest

from pipelines.batch.arrow_types import arrow_field, arrow_schema, arrow_struct, arrow_type, from_arrow, to_arrow
from pipelines.batch.results import RESULT_COLUMNS, RESULT_SCHEMA, ResultRow
from pipelines.batch.tasks import IDENTITY_TYPE, REQUEST_SCHEMA, REQUEST_TYPE, TASK_SCHEMA
from pipelines.conditioning.align import AlignTransform, compute_alignment, identity_alignment

# -- literal copies of the hand-written schemas this replaced ------------------------------------------------------

OLD_REQUEST_TYPE = pa.struct([
    ("request_id", pa.string()), ("source", pa.string()), ("driving", pa.string()), ("output", pa.string()),
    ("preview_output", pa.string()), ("steps", pa.int64()), ("guidance_scale", pa.float64()), ("seed", pa.int64()),
    ("camera", pa.bool_()), ("window", pa.int64()), ("overlap", pa.int64()), ("size", pa.int64()),
    ("fps", pa.float64()), ("frame_start", pa.int64()), ("frame_end", pa.int64()), ("preview", pa.bool_()),
    ("length_policy", pa.string()), ("fusion", pa.string()), ("align_mode", pa.string()),
    ("source_subject", pa.string()), ("driving_subject", pa.string()), ("row", pa.int64()),
])
OLD_TRANSFORM_TYPE = pa.struct([
    ("version", pa.int64()), ("mode", pa.string()), ("size", pa.list_(pa.int64())), ("global_scale", pa.float64()),
    ("bone_scale", pa.map_(pa.string(), pa.float64())), ("src_anchor", pa.list_(pa.float64())),
    ("drv_anchor", pa.list_(pa.float64())), ("width_ratio", pa.float64()), ("keep_x", pa.bool_()),
    ("identity", pa.bool_()),
])
OLD_PLAN_TYPE = pa.struct([
    ("frames", pa.int64()), ("fps", pa.string()), ("source_fps", pa.float64()), ("has_audio", pa.bool_()),
    ("audio_offset", pa.float64()), ("resampled", pa.bool_()), ("rotation", pa.int64()), ("rescaled", pa.bool_()),
    ("tone_mapped", pa.bool_()),
    ("geometry", pa.struct([("scale", pa.float64()), ("ox", pa.int64()), ("oy", pa.int64())])),
    ("source_hw", pa.list_(pa.int64())), ("transform", OLD_TRANSFORM_TYPE),
])
OLD_TIMES_TYPE = pa.struct([(n, pa.float64()) for n in (
    "probe", "prepare", "edit", "write", "model", "busy", "edit_started_at", "edit_ended_at", "gpu_memory_peak")])
OLD_MODEL_IDENTITY_TYPE = pa.map_(pa.string(), pa.string())
OLD_REQUEST_IDENTITY_TYPE = pa.struct([("source", pa.string()), ("driving", pa.string()), ("key", pa.string())])
OLD_GROUP_WINDOW_TYPE = pa.struct([("index", pa.int32()), ("start", pa.int64()), ("end", pa.int64()),
                                   ("window_id", pa.string()), ("uri", pa.string())])  # a fused group's member
OLD_RESULT_SCHEMA = pa.schema([
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("source", pa.string()),
    pa.field("driving", pa.string()),
    pa.field("output_uri", pa.string()),
    pa.field("preview_uri", pa.string()),
    pa.field("frames", pa.int64()),
    pa.field("fps", pa.float64()),
    pa.field("fps_rational", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("windows", pa.int32()),
    pa.field("fusion", pa.string()),
    pa.field("source_fps", pa.float64()),
    pa.field("resampled", pa.bool_()),
    pa.field("rotation", pa.int32()),
    pa.field("rescaled", pa.bool_()),
    pa.field("tone_mapped", pa.bool_()),
    pa.field("seam_score", pa.float64()),
    pa.field("seconds_probe", pa.float64()),
    pa.field("seconds_prepare", pa.float64()),
    pa.field("seconds_edit", pa.float64()),
    pa.field("seconds_stitch", pa.float64()),
    pa.field("seconds_total", pa.float64()),
    pa.field("model", pa.string()),
    pa.field("weights_id", pa.string()),
    pa.field("params_json", pa.string()),
    pa.field("source_identity", pa.string()),
    pa.field("driving_identity", pa.string()),
    pa.field("content_key", pa.string()),
    pa.field("bytes_written", pa.int64()),
    pa.field("manifest_row", pa.int32()),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
])
OLD_RESULT_TYPE = pa.struct(list(OLD_RESULT_SCHEMA))  # a finished request's row, found by the plan stage
OLD_SUBJECT_TRACK_TYPE = pa.struct([("frames", pa.list_(pa.int64())),  # a chosen person's boxes over a task
                                    ("boxes", pa.list_(pa.list_(pa.float64())))])
OLD_TASK_SCHEMA = pa.schema([
    ("request", OLD_REQUEST_TYPE), ("identity", OLD_REQUEST_IDENTITY_TYPE), ("plan", OLD_PLAN_TYPE),
    ("window_id", pa.string()),
    ("index", pa.int32()), ("count", pa.int32()), ("start", pa.int64()), ("end", pa.int64()),
    ("source_indices", pa.list_(pa.int64())), ("driving_indices", pa.list_(pa.int64())), ("uri", pa.string()),
    ("group", pa.list_(OLD_GROUP_WINDOW_TYPE)),
    ("source_subject", OLD_SUBJECT_TRACK_TYPE), ("driving_subject", OLD_SUBJECT_TRACK_TYPE),
    ("status", pa.string()), ("error", pa.string()), ("times", OLD_TIMES_TYPE),
    ("model_identity", OLD_MODEL_IDENTITY_TYPE),
    ("prepare_node", pa.string()), ("edit_node", pa.string()), ("payload", pa.large_binary()),
    ("result", OLD_RESULT_TYPE),
])


@pytest.mark.parametrize("derived, old", [
    (TASK_SCHEMA, OLD_TASK_SCHEMA), (RESULT_SCHEMA, OLD_RESULT_SCHEMA), (REQUEST_TYPE, OLD_REQUEST_TYPE),
    (IDENTITY_TYPE, OLD_REQUEST_IDENTITY_TYPE), (arrow_struct(AlignTransform), OLD_TRANSFORM_TYPE),
    (REQUEST_SCHEMA, pa.schema([("request", OLD_REQUEST_TYPE), ("identity", OLD_REQUEST_IDENTITY_TYPE)])),
], ids=["task", "result", "request", "identity", "transform", "plan-input"])
def test_derived_schemas_equal_the_hand_written_ones(derived, old):
    assert derived.equals(old, check_metadata=True), f"\n{derived}\n!=\n{old}"
    assert [(f.name, f.nullable) for f in derived] == [(f.name, f.nullable) for f in old]  # order, nullability


def test_result_columns_are_the_row_fields_in_order():
    assert RESULT_COLUMNS == tuple(f.name for f in dataclasses.fields(ResultRow))


# -- the helper -----------------------------------------------------------------------------------------------------

@dataclass
class _Inner:
    a: int
    b: Optional[str] = None


@dataclass
class _Outer:
    name: str = arrow_field(nullable=False)
    small: int = arrow_field(pa.int32(), default=0)
    hw: tuple[int, int] = (0, 0)
    floats: list[float] = field(default_factory=list)
    scales: dict[str, float] = field(default_factory=dict)
    inner: Optional[_Inner] = None
    when: Optional[datetime] = None
    blob: Optional[bytes] = None
    free: dict[str, Any] = arrow_field(pa.struct([("x", pa.int64())]), default_factory=dict)


def test_hints_map_to_arrow_types():
    assert arrow_type(Optional[float]) == pa.float64()
    assert arrow_type(tuple[float, ...]) == pa.list_(pa.float64())
    assert arrow_type(dict[str, str]) == pa.map_(pa.string(), pa.string())
    schema = arrow_schema(_Outer)
    assert schema.names == ["name", "small", "hw", "floats", "scales", "inner", "when", "blob", "free"]
    assert not schema.field("name").nullable and schema.field("small").type == pa.int32()
    assert schema.field("inner").type == pa.struct([("a", pa.int64()), ("b", pa.string())])
    assert schema.field("when").type == pa.timestamp("us", tz="UTC")
    assert schema.field("free").type == pa.struct([("x", pa.int64())])


def test_a_hint_without_an_arrow_type_names_the_field():
    @dataclass
    class Bad:
        anything: dict[str, Any]

    with pytest.raises(TypeError, match="Bad.anything"):
        arrow_schema(Bad)
    with pytest.raises(TypeError, match="union"):
        arrow_type(Optional[int | str])


def test_values_round_trip_through_a_table():
    obj = _Outer("n", 3, (4, 5), [1.5], {"k": 2.0}, _Inner(1), datetime(2025, 1, 1, tzinfo=timezone.utc), b"x",
                 {"x": 7})
    empty = _Outer("m", free={"x": None})  # a struct of a dict comes back with every key of the struct
    table = pa.Table.from_pylist([to_arrow(obj), to_arrow(empty)], schema=arrow_schema(_Outer))
    back = [from_arrow(_Outer, r) for r in table.to_pylist()]
    assert back == [obj, empty]
    assert isinstance(back[0].hw, tuple) and isinstance(back[0].inner, _Inner)


# -- the alignment transform's dict boundary ------------------------------------------------------------------------

def test_align_transform_dict_is_its_json_of_old():
    tf = AlignTransform(mode="ground", size=(512, 256), global_scale=1.5, src_anchor=(1, 2), drv_anchor=[3.0, 4.0])
    d = tf.to_dict()
    assert d == {"version": 2, "mode": "ground", "size": [512, 256], "global_scale": 1.5, "bone_scale": {},
                 "src_anchor": [1.0, 2.0], "drv_anchor": [3.0, 4.0], "width_ratio": 1.0, "keep_x": True}
    assert AlignTransform.from_dict(json.loads(json.dumps(d))) == tf
    assert dataclasses.replace(tf, identity=True).to_dict()["identity"] is True  # only when true, as before
    # an absent or null field is its default: what the readers of the old dict assumed
    assert AlignTransform.from_dict({"version": 1, "mode": None}) == AlignTransform(version=1, mode="bones")
    assert identity_alignment((8, 8)) == AlignTransform(version=1, size=(8, 8))
    with pytest.raises(ValueError, match="colour"):
        AlignTransform.from_dict({"colour": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        tf.mode = "bones"


def test_compute_alignment_gives_an_align_transform_in_the_dead_band():
    import numpy as np

    from pipelines.conditioning.poses.keypoints import PoseTrack

    body = np.zeros((1, 18, 3), np.float32)
    body[0, :, 2] = 1.0
    body[0, :, 0] = np.linspace(200, 300, 18)
    body[0, :, 1] = np.linspace(100, 400, 18)
    track = PoseTrack(body, np.zeros((1, 2, 21, 3)), np.zeros(1), (512, 512))
    tf = compute_alignment(track, track, ref_frames=1)
    assert isinstance(tf, AlignTransform) and tf.identity and tf.mode == "ground" and tf.size == (512, 512)
    assert tf.to_dict()["identity"] is True and tf.src_anchor is None and tf.global_scale == 1.0
