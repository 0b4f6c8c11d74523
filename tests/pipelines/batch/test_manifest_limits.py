"""Untrusted request manifests: output clashes, cell and file sizes, ASCII/finite numbers (pipelines.batch.requests
and the manifest_files, manifest_clashes and manifest_limits modules behind it)."""
from __future__ import annotations

import json
import os
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.batch import manifest_files
from pipelines.batch.manifest_clashes import uri_key
from pipelines.batch.manifest_limits import CSV_FIELD_LIMIT
from pipelines.batch.requests import ManifestError, read_manifest, read_raw_rows, write_manifest
from pipelines.media import storage

SRC, DRV = "s3://b/a.mp4", "s3://b/d.mp4"
BIG = 10 * 1024 * 1024  # a 10 MB cell


def _write(tmp_path, fmt, rows, name="m"):
    uri = str(tmp_path / f"{name}.{fmt}")
    write_manifest(rows, uri)
    return uri


def _errors(man):
    return {b.row: b.error for b in man.invalid}


def _short(err):
    return len(err) < 500  # the path, a cut preview of the value and the column list: never the whole value


@pytest.fixture(params=["parquet", "csv", "jsonl"])
def fmt(request):
    return request.param


# ------------------------------------------------------------------------------------------------ output clashes

def test_duplicate_outputs_fail_every_row_involved(tmp_path, fmt):
    out_file = str(tmp_path / "out" / "x.mp4")
    rows = [
        {"source": SRC, "driving": DRV, "request_id": "a", "output": "out/x.mp4"},  # relative to the manifest
        {"source": SRC, "driving": DRV, "request_id": "b", "output": str(tmp_path / "out" / "y.mp4")},
        {"source": SRC, "driving": DRV, "request_id": "c", "output": f"file://{tmp_path}/out/./sub/../x.mp4"},
        {"source": SRC, "driving": DRV, "request_id": "d", "output": out_file},
    ]
    man = read_manifest(_write(tmp_path, fmt, rows), out=str(tmp_path / "run"))
    assert [r.request_id for r in man.requests] == ["b"]
    errs = _errors(man)
    assert sorted(errs) == [1, 3, 4]
    assert "column 'output'" in errs[1] and "row(s) 3, 4" in errs[1]
    assert "row(s) 1, 4" in errs[3] and "row(s) 1, 3" in errs[4]
    assert {b.request_id for b in man.invalid} == {"a", "c", "d"}
    with pytest.raises(ManifestError, match="row 1: column 'output'"):
        read_manifest(_write(tmp_path, fmt, rows), out=str(tmp_path / "run"), strict=True)


def test_explicit_output_clashing_with_default_and_preview(tmp_path):
    run = str(tmp_path / "run")
    rows = [
        {"source": SRC, "driving": DRV, "request_id": "a"},  # default <run>/videos/a.mp4
        {"source": SRC, "driving": DRV, "request_id": "b", "output": f"{run}//videos/a.mp4"},
        {"source": SRC, "driving": DRV, "request_id": "c", "preview": True},  # preview <run>/previews/c.mp4
        {"source": SRC, "driving": DRV, "request_id": "d", "output": storage.join(run, "previews", "c.mp4")},
        {"source": SRC, "driving": DRV, "request_id": "e", "preview": True},
    ]
    man = read_manifest(_write(tmp_path, "jsonl", rows), out=run)
    assert [r.request_id for r in man.requests] == ["e"]
    errs = _errors(man)
    assert "row(s) 2" in errs[1] and "row(s) 1" in errs[2]
    assert "column 'preview'" in errs[3] and "preview output" in errs[3] and "row(s) 4" in errs[3]
    assert "column 'output'" in errs[4] and "row(s) 3" in errs[4]


def test_output_overwriting_an_input_fails(tmp_path, fmt):
    (tmp_path / "in").mkdir()
    rows = [
        {"source": "in/a.mp4", "driving": "in/d.mp4", "request_id": "own-src", "output": str(tmp_path / "in/a.mp4")},
        {"source": "in/b.mp4", "driving": "in/d.mp4", "request_id": "own-drv", "output": "./in/x/../d.mp4"},
        {"source": "in/c.mp4", "driving": "in/e.mp4", "request_id": "other", "output": "in/b.mp4"},
        {"source": "s3://bk/v.mp4", "driving": "s3://bk/m.mp4", "request_id": "s3", "output": "s3://bk//v.mp4"},
        {"source": "in/f.mp4", "driving": "in/e.mp4", "request_id": "man", "output": f"m.{fmt}"},
        {"source": "in/a.mp4", "driving": "in/e.mp4", "request_id": "fine", "output": "videos/fine.mp4"},
    ]
    man = read_manifest(_write(tmp_path, fmt, rows), out=str(tmp_path / "run"))
    assert [r.request_id for r in man.requests] == ["fine"]
    errs = _errors(man)
    assert "its own source" in errs[1] and "overwritten" in errs[1] and "column 'output'" in errs[1]
    assert "its own driving" in errs[2]
    assert "the source of row 2" in errs[3]
    assert "its own source" in errs[4]
    assert "the manifest itself" in errs[5]


def test_preview_overwriting_an_input_fails(tmp_path):
    run = tmp_path / "run"
    rows = [{"source": str(run / "previews" / "p.mp4"), "driving": DRV, "request_id": "p", "preview": True}]
    (bad,) = read_manifest(_write(tmp_path, "jsonl", rows), out=str(run)).invalid
    assert "column 'preview'" in bad.error and "its own source" in bad.error


def test_duplicate_request_id_fails_before_outputs_are_compared(tmp_path):
    rows = [{"source": SRC, "driving": DRV, "request_id": "dup"}, {"source": "s3://b/c.mp4", "driving": DRV,
                                                                   "request_id": "dup"}]
    man = read_manifest(_write(tmp_path, "jsonl", rows), out="/o")
    assert [r.row for r in man.requests] == [1] and "duplicate request_id" in _errors(man)[2]


def test_uri_key():
    cwd = os.getcwd()
    assert uri_key("a/./b/../c.mp4") == uri_key(f"file://{cwd}/a/c.mp4") == uri_key(f"file:{cwd}//a/c.mp4")
    assert uri_key("a/c.mp4") == os.path.join(cwd, "a", "c.mp4")
    assert uri_key("S3://b//x/./y.mp4") == uri_key("s3a://b/x/y.mp4") == "s3://b/x/y.mp4"
    assert uri_key("gcs://b/x") == "gs://b/x" and uri_key("memory:///x") == uri_key("memory://x")
    assert uri_key("s3://b/x.mp4") != uri_key("s3://b/X.mp4") != uri_key("gs://b/x.mp4")


# ------------------------------------------------------------------------------------------------ sizes

def test_ten_megabyte_request_id_fails_its_row_with_a_short_error(tmp_path, fmt):
    rows = [{"source": SRC, "driving": DRV, "request_id": "ok1"},
            {"source": SRC, "driving": DRV, "request_id": "x" * BIG},
            {"source": SRC, "driving": DRV, "request_id": "ok3"}]
    man = read_manifest(_write(tmp_path, fmt, rows), out="/o")
    assert [r.request_id for r in man.requests] == ["ok1", "ok3"]
    (bad,) = man.invalid
    assert bad.row == 2 and _short(bad.error), len(bad.error)
    assert "column 'request_id'" in bad.error and "too large" in bad.error and f"({BIG} characters" in bad.error
    assert "…" in bad.error
    uuid.UUID(bad.request_id)  # derived, not the 10 MB value


def test_long_values_are_cut_in_every_error(tmp_path):
    long_id = "y" * 1000  # under the cell cap, over the request_id rule
    rows = [{"source": SRC, "driving": DRV, "request_id": long_id},
            {"source": "s" * BIG, "driving": DRV},
            {"source": SRC, "driving": DRV, "length_policy": "z" * 60},
            {"source": SRC, "driving": DRV, "camera": "\x00" * 60},
            {"source": ["p"] * 100_000, "driving": DRV}]
    man = read_manifest(_write(tmp_path, "jsonl", rows), out="/o")
    errs = _errors(man)
    assert sorted(errs) == [1, 2, 3, 4, 5] and all(_short(e) for e in errs.values()), errs
    assert "'request_id'" in errs[1] and "(1000 characters)" in errs[1] and long_id not in errs[1]
    assert "'source'" in errs[2] and f"({BIG} characters" in errs[2]
    assert "'length_policy'" in errs[3] and "'camera'" in errs[4] and "'source'" in errs[5]
    bad = man.invalid[1]
    assert bad.source is not None and len(bad.source) < 200  # the 10 MB source is not copied into the result


def test_csv_cell_over_128_kib_fails_its_row_only(tmp_path):
    uri = tmp_path / "m.csv"
    big = "v" * (200 * 1024)
    uri.write_text(f"source,driving,request_id\n{SRC},{DRV},r1\n\"{big}\",{DRV},r2\n{SRC},{DRV},r3\n")
    man = read_manifest(str(uri), out="/o")
    assert [r.request_id for r in man.requests] == ["r1", "r3"]
    (bad,) = man.invalid
    assert bad.row == 2 and bad.request_id == "r2" and _short(bad.error)
    assert "column 'source'" in bad.error and f"{200 * 1024} characters" in bad.error
    cols, raw = read_raw_rows(str(uri))  # catalogs read such a file too
    assert cols == ["source", "driving", "request_id"] and len(raw[1]["source"]) == 200 * 1024


def test_number_cells_have_a_smaller_cap(tmp_path):
    rows = [{"source": SRC, "driving": DRV, "steps": "0" * 70 + "5"}, {"source": SRC, "driving": DRV, "steps": 5}]
    man = read_manifest(_write(tmp_path, "csv", rows), out="/o")
    assert [r.steps for r in man.requests] == [5]
    assert "column 'steps'" in man.invalid[0].error and "at most 64" in man.invalid[0].error


def test_csv_cell_over_the_field_limit_refuses_the_file(tmp_path):
    uri = tmp_path / "m.csv"
    uri.write_text(f"source,driving\n{SRC},{DRV}\n\"{'v' * (CSV_FIELD_LIMIT + 1)}\",{DRV}\n")
    with pytest.raises(ManifestError, match="larger than") as e:
        read_manifest(str(uri), out="/o")
    assert _short(str(e.value))


def test_csv_row_with_extra_values_fails_alone(tmp_path):
    uri = tmp_path / "m.csv"
    uri.write_text(f"source,driving\n{SRC},{DRV}\n{SRC},{DRV},surplus\n{SRC},{DRV}\n")
    man = read_manifest(str(uri), out="/o")
    assert [r.row for r in man.requests] == [1] and "more values (3) than columns (2)" in _errors(man)[2]
    assert "duplicate request_id" in _errors(man)[3]  # row 3 repeats row 1: same derived id
    with pytest.raises(ManifestError, match="row 2: more values"):
        read_raw_rows(str(uri))


def test_manifest_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    uri = _write(tmp_path, "jsonl", [{"source": SRC, "driving": DRV}] * 10)
    monkeypatch.setattr(manifest_files, "MAX_MANIFEST_BYTES", 100)  # the reader's copy
    with pytest.raises(ManifestError, match="over the 100 byte limit"):
        read_manifest(uri, out="/o")
    mem = f"memory://mf-limits-{uuid.uuid4().hex[:8]}"
    try:
        storage.atomic_write_text(storage.join(mem, "m.csv"), "source,driving\n" + f"{SRC},{DRV}\n" * 10)
        with pytest.raises(ManifestError, match="byte limit"):
            read_manifest(storage.join(mem, "m.csv"), out="/o")
    finally:
        storage.remove(mem)


def test_header_names_cut_and_duplicates_refused(tmp_path):
    uri = tmp_path / "m.csv"
    uri.write_text(f"source,driving,{'q' * BIG}\n{SRC},{DRV},1\n")
    with pytest.raises(ManifestError, match="unknown column") as e:
        read_manifest(str(uri), out="/o")
    assert _short(str(e.value)) and str(BIG) in str(e.value)
    uri.write_text(f"source,driving,source\n{SRC},{DRV},s3://b/other.mp4\n")
    with pytest.raises(ManifestError, match="'source' given more than once"):
        read_manifest(str(uri), out="/o")
    table = pa.table([pa.array([SRC]), pa.array([DRV]), pa.array([5]), pa.array([6])],
                     names=["source", "driving", "steps", "steps"])
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="steps") as e:  # pyarrow itself refuses such a file
        read_manifest(str(tmp_path / "m.parquet"), out="/o")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ numbers

NON_ASCII = [("steps", "１"), ("steps", "５０"), ("seed", "٤٢"), ("window", "१६"), ("cfg", "３.５"),
             ("fps", "３０"), ("fps", "３０/１"), ("steps", "1_0"), ("cfg", "1_0.5"), ("size", "0x200")]
NOT_FINITE = [("cfg", "inf"), ("cfg", "-inf"), ("cfg", "nan"), ("cfg", "NaN"), ("cfg", "1e400"), ("fps", "inf"),
              ("steps", "1e400"), ("steps", "inf"), ("seed", "nan")]
OUT_OF_RANGE = [("cfg", "1e308"), ("cfg", "100.5"), ("cfg", "-0.5"), ("frame_end", "1e30"),
                ("frame_start", str(2**63)), ("frame_end", str(2**63))]


@pytest.mark.parametrize(("col", "value"), NON_ASCII + NOT_FINITE + OUT_OF_RANGE)
def test_bad_numbers_fail_their_row(tmp_path, col, value):
    uri = tmp_path / "m.csv"
    uri.write_text(f"source,driving,{col}\n{SRC},{DRV},{value}\ns3://b/other.mp4,{DRV},\n", encoding="utf-8")
    man = read_manifest(str(uri), out="/o")
    assert [r.row for r in man.requests] == [2]
    (bad,) = man.invalid
    assert f"column '{col}'" in bad.error, bad.error
    if (col, value) in OUT_OF_RANGE:
        assert "must be" in bad.error
    else:
        assert "ASCII" in bad.error and repr(value) in bad.error, bad.error


def test_bad_numbers_in_jsonl_and_parquet(tmp_path):
    lines = [{"source": SRC, "driving": DRV, "request_id": f"r{i}", **cell} for i, cell in enumerate([
        {"steps": "１"}, {"cfg": 1e308}, {"seed": 10**100}, {"source": 10**100}, {"cfg": 3.5}])]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    text += json.dumps({"source": SRC, "driving": DRV, "request_id": "nan"}).replace("}", ', "cfg": NaN}\n')
    text += json.dumps({"source": SRC, "driving": DRV, "request_id": "inf"}).replace("}", ', "fps": Infinity}\n')
    (tmp_path / "m.jsonl").write_text(text)
    man = read_manifest(str(tmp_path / "m.jsonl"), out="/o")
    assert [r.request_id for r in man.requests] == ["r4"]
    errs = _errors(man)
    assert "'steps'" in errs[1] and "'cfg'" in errs[2] and "0..100" in errs[2]
    assert "'seed'" in errs[3] and "too large" in errs[3] and "'source'" in errs[4] and "string" in errs[4]
    assert "'cfg'" in errs[6] and "'NaN'" in errs[6] and "'fps'" in errs[7] and "'Infinity'" in errs[7]
    table = pa.table({"source": [SRC] * 3, "driving": [DRV] * 3, "request_id": ["a", "b", "c"],
                      "cfg": [float("inf"), 2.0, float("nan")]})  # NaN in a float column = missing (pandas)
    pq.write_table(table, tmp_path / "m.parquet")
    man = read_manifest(str(tmp_path / "m.parquet"), out="/o")
    assert [(r.request_id, r.guidance_scale) for r in man.requests] == [("b", 2.0), ("c", 3.5)]
    assert "column 'cfg'" in man.invalid[0].error and "finite" in man.invalid[0].error


def test_good_numbers_still_parse(tmp_path):
    uri = tmp_path / "m.csv"
    uri.write_text("source,driving,request_id,steps,cfg,seed,window,overlap,fps,frame_start,frame_end\n"
                   f"{SRC},{DRV},a,30.0,0,+7,16,0,30000/1001,0,{2**63 - 1}\n"
                   f"{SRC},{DRV},b,1e1,.5,1E3, 8 ,7, 25 ,3,4\n"
                   f"{SRC},{DRV},c,1000,100,{2**63 - 1},32,31,1000,0,\n")
    a, b, c = read_manifest(str(uri), out="/o").requests
    assert (a.steps, a.guidance_scale, a.seed, a.window, a.overlap, a.frame_end) == (30, 0.0, 7, 16, 0, 2**63 - 1)
    assert abs(a.fps - 30000 / 1001) < 1e-12
    assert (b.steps, b.guidance_scale, b.seed, b.window, b.overlap, b.fps, b.frame_start) == (
        10, 0.5, 1000, 8, 7, 25.0, 3)
    assert (c.steps, c.guidance_scale, c.seed, c.window, c.fps) == (1000, 100.0, 2**63 - 1, 32, 1000.0)


def test_normal_manifest_same_in_every_format(tmp_path):
    rows = [{"source": "v/a.mp4", "driving": "v/d.mp4", "request_id": "r1", "steps": 20, "cfg": 2.0, "seed": 7,
             "camera": True, "window": 16, "overlap": 4, "size": 256, "fps": 25.0, "frame_start": 3,
             "frame_end": 50, "preview": True, "length_policy": "loop", "output": "o/x.mp4"},
            {"source": "v/b.mp4", "driving": "v/d.mp4", "request_id": "r2", "steps": 50, "cfg": 3.5, "seed": 42,
             "camera": False, "window": 24, "overlap": 8, "size": 512, "fps": 30.0, "frame_start": 0,
             "frame_end": 9, "preview": False, "length_policy": "trim", "output": "o/y.mp4"}]
    got = [read_manifest(_write(tmp_path, f, rows), out=str(tmp_path / "run")) for f in ("parquet", "csv", "jsonl")]
    assert all(m.invalid == [] for m in got)
    assert got[0].requests == got[1].requests == got[2].requests
    r1 = got[0].requests[0]
    assert r1.output == str(tmp_path / "o" / "x.mp4") and r1.source == str(tmp_path / "v" / "a.mp4")
    assert r1.preview_output == str(tmp_path / "run" / "previews" / "r1.mp4")
