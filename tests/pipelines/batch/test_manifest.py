from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest

from pipelines.batch.requests import ManifestError, read_manifest, write_manifest
from pipelines.batch.results import RESULT_SCHEMA, ResultRow, read_results, results_table, write_results
from pipelines.media import storage

ROWS = [
    {"source": "s3://b/a.mp4", "driving": "s3://b/d.mp4"},
    {"source": "s3://b/a.mp4", "driving": "s3://b/d.mp4", "request_id": "r2", "steps": 20, "cfg": 2.0,
     "seed": 7, "camera": True, "window": 16, "overlap": 4, "size": 256, "fps": 25, "frame_start": 3,
     "frame_end": 50, "preview": True, "length_policy": "loop", "output": "s3://o/x.mp4"},
]


@pytest.fixture(params=["parquet", "csv", "jsonl"])
def fmt(request):
    return request.param


@pytest.fixture
def root(tmp_path):
    return str(tmp_path)


def _write(root, fmt, rows, name="m"):
    uri = storage.join(root, f"{name}.{fmt}")
    write_manifest(rows, uri)
    return uri


def test_read_defaults_and_values(root, fmt):
    if fmt == "parquet":  # one schema per parquet file: give the first row nulls explicitly
        rows = [{k: None for k in ROWS[1]} | ROWS[0], ROWS[1]]
    else:
        rows = ROWS
    man = read_manifest(_write(root, fmt, rows), out="s3://out/run")
    assert man.invalid == []
    a, b = man.requests
    assert (a.steps, a.guidance_scale, a.seed, a.camera, a.window, a.overlap, a.size, a.fps, a.frame_start, a.frame_end,
            a.preview, a.length_policy) == (50, 3.5, 42, False, 24, 8, 512, None, 0, None, False, "trim")
    assert a.output == f"s3://out/run/videos/{a.request_id}.mp4"
    assert a.preview_output is None and a.row == 1
    uuid.UUID(a.request_id)
    assert (b.request_id, b.steps, b.guidance_scale, b.seed, b.camera, b.window, b.overlap, b.size, b.fps,
            b.frame_start, b.frame_end, b.preview, b.length_policy, b.output) == (
        "r2", 20, 2.0, 7, True, 16, 4, 256, 25.0, 3, 50, True, "loop", "s3://o/x.mp4")
    assert b.preview_output == "s3://out/run/previews/r2.mp4"
    assert json.loads(b.params_json())["steps"] == 20


def test_guidance_scale_and_its_old_name(root, fmt):
    new = read_manifest(_write(root, fmt, [{**ROWS[0], "guidance_scale": 2.5}], "new"), out="/o").requests[0]
    old = read_manifest(_write(root, fmt, [{**ROWS[0], "cfg": 2.5}], "old"), out="/o").requests[0]
    assert new.guidance_scale == old.guidance_scale == 2.5 and new.request_id == old.request_id
    bad = read_manifest(_write(root, fmt, [{**ROWS[0], "cfg": 200}], "bad"), out="/o")
    assert "column 'cfg'" in bad.invalid[0].error and "0..100" in bad.invalid[0].error  # named as the user wrote it
    both = _write(root, fmt, [{**ROWS[0], "cfg": 2.5, "guidance_scale": 2.5}], "both")
    with pytest.raises(ManifestError, match="'cfg' and 'guidance_scale' are one column"):
        read_manifest(both, out="/o")


def test_request_id_deterministic(root):
    m1 = read_manifest(_write(root, "csv", ROWS[:1], "a"), out="/o")
    m2 = read_manifest(_write(root, "jsonl", ROWS[:1], "b"), out="/o")
    assert m1.requests[0].request_id == m2.requests[0].request_id
    m3 = read_manifest(_write(root, "jsonl", [{**ROWS[0], "seed": 1}], "c"), out="/o")
    assert m3.requests[0].request_id != m1.requests[0].request_id


def test_unknown_and_missing_columns(root, fmt):
    uri = _write(root, fmt, [{**ROWS[0], "stpes": 10, "colour": "red"}])
    with pytest.raises(ManifestError) as e:
        read_manifest(uri, out="/o")
    assert "'stpes'" in str(e.value) and "'colour'" in str(e.value) and uri in str(e.value)
    uri = _write(root, fmt, [{"source": "a.mp4"}], "nodriving")
    with pytest.raises(ManifestError, match="driving"):
        read_manifest(uri, out="/o")


def test_bad_rows_fail_alone(root):
    rows = [
        ROWS[0],
        {"source": "a.mp4", "driving": "d.mp4", "steps": "many"},
        {"source": "a.mp4", "driving": "d.mp4", "window": 40},
        {"source": "a.mp4", "driving": "d.mp4", "window": 16, "overlap": 16},
        {"source": "", "driving": "d.mp4"},
        {"source": "a.mp4", "driving": "d.mp4", "length_policy": "stretch"},
        {"source": "a.mp4", "driving": "d.mp4", "camera": "maybe"},
        {"source": "b.mp4", "driving": "d.mp4", "request_id": "dup"},
        {"source": "c.mp4", "driving": "d.mp4", "request_id": "dup"},
        {"source": "a.mp4", "driving": "d.mp4", "size": 500},
        {"source": "a.mp4", "driving": "d.mp4", "frame_start": 10, "frame_end": 5},
    ]
    uri = _write(root, "jsonl", rows)
    man = read_manifest(uri, out="/o")
    assert [r.row for r in man.requests] == [1, 8]
    errs = {b.row: b.error for b in man.invalid}
    assert sorted(errs) == [2, 3, 4, 5, 6, 7, 9, 10, 11]
    assert "row 2" in errs[2] and "'steps'" in errs[2] and uri in errs[2]
    assert "'window'" in errs[3] and "'overlap'" in errs[4] and "'source'" in errs[5]
    assert "'length_policy'" in errs[6] and "'camera'" in errs[7] and "duplicate" in errs[9]
    assert "'size'" in errs[10] and "'frame_end'" in errs[11]
    assert len({b.request_id for b in man.invalid}) == len(man.invalid)  # every failed row has its own id
    with pytest.raises(ManifestError, match="row 2"):
        read_manifest(uri, out="/o", strict=True)


def test_csv_types_and_relative_paths(root):
    uri = storage.join(root, "sub", "m.csv")
    storage.atomic_write_text(uri, "source,driving,steps,camera,fps,frame_end\n"
                                   "videos/a.mp4,/abs/d.mp4,30.0,yes,30000/1001,\n")
    (r,) = read_manifest(uri, out="/o").requests
    assert r.source == storage.join(root, "sub", "videos", "a.mp4") and r.driving == "/abs/d.mp4"
    assert r.steps == 30 and r.camera is True and abs(r.fps - 30000 / 1001) < 1e-9 and r.frame_end is None


def test_memory_fs_and_bad_files():
    root = f"memory://mf-man-{uuid.uuid4().hex[:8]}"
    uri = _write(root, "parquet", ROWS[:1])
    assert len(read_manifest(uri, out=root).requests) == 1
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(storage.join(root, "nope.csv"), out=root)
    with pytest.raises(ManifestError, match="format"):
        read_manifest(storage.join(root, "m.txt"), out=root)
    storage.atomic_write_text(storage.join(root, "broken.jsonl"), '{"source": "a"\n')
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(storage.join(root, "broken.jsonl"), out=root)
    storage.remove(root)


def test_results_roundtrip(root):
    man = read_manifest(_write(root, "jsonl", [ROWS[0], {"source": "a", "driving": "b", "steps": -1}]), out=root)
    rows = [
        ResultRow.for_request(man.requests[0], "succeeded", frames=100, fps=29.97, fps_rational="30000/1001",
                              width=512, height=512, windows=6, seam_score=1.02, seconds_total=3.5,
                              model="tiny", weights_id="abc"),
        ResultRow.for_invalid(man.invalid[0]),
        {"request_id": "x", "status": "skipped", "finished_at": datetime(2025, 1, 1, tzinfo=timezone.utc)},
    ]
    uri = storage.join(root, "results", "results.parquet")
    write_results(rows, uri)
    table = pq.read_table(uri, use_threads=False)
    assert table.schema.equals(RESULT_SCHEMA)
    got = read_results(uri)
    assert [g["status"] for g in got] == ["succeeded", "failed", "skipped"]
    assert got[0]["frames"] == 100 and got[0]["fps_rational"] == "30000/1001" and got[0]["manifest_row"] == 1
    assert "'steps'" in got[1]["error"]
    assert all(g["finished_at"] is not None for g in got)
    with pytest.raises(ValueError, match="status"):
        results_table([{"request_id": "y", "status": "done"}])
    with pytest.raises(ValueError, match="unknown"):
        results_table([{"request_id": "y", "status": "failed", "colour": 1}])
    assert read_results(storage.join(root, "missing.parquet")) == []
