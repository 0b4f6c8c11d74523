"""Pose tracks are untrusted input: pose_track_header and read_pose_track read them into bounded arrays (Parquet
footer and page headers checked before any data, JSON parsed one bounded value at a time with real key decoding),
refuse with an InputError naming the file and the problem, and still round-trip what write_pose_track writes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.conditioning.poses.keypoints import PoseTrack, pose_track_header, read_pose_track, write_pose_track
from pipelines.media.errors import InputError

ROOT = Path(__file__).resolve().parents[3]
HUGE = 12_500_000  # floats in each of the two rows of the 2 KB bomb


def _track(n: int = 20, fps: float = 24.0, seed: int = 0) -> PoseTrack:
    rng = np.random.default_rng(seed)
    return PoseTrack(rng.random((n, 18, 3)) * 500, rng.random((n, 2, 21, 3)) * 500, rng.integers(0, 7, n),
                     (480, 640), fps)


def _table(body, hands=None, fps="24.0", frames=None) -> pa.Table:
    n = len(body)
    hands = [np.zeros(126, np.float32)] * n if hands is None else hands
    return pa.table({"frame": pa.array(np.arange(n) if frames is None else frames, pa.int32()),
                     "body": pa.array(body, pa.list_(pa.float32())), "hands": pa.array(hands, pa.list_(pa.float32())),
                     "flags": pa.array(np.zeros(n), pa.int32())}).replace_schema_metadata(
        {"mf_pose_version": "1", "width": "64", "height": "64", "fps": fps})


def _bomb(path: Path) -> Path:
    """Two rows of 12.5 M floats each: a couple of KB once dictionary- and run-length encoded."""
    pq.write_table(_table([np.zeros(HUGE, np.float32)] * 2), path, compression="zstd")
    assert path.stat().st_size < 4096
    return path


def _varint(v: int, width: int = 0) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v >> 7 else 0))
        v >>= 7
        if not v:
            break
    while len(out) < width:  # a non-canonical, same-length encoding
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


def _understated(path: Path) -> Path:
    """The bomb with its footer claiming 108 body values (Thrift zigzag varints patched in place)."""
    data = _bomb(path).read_bytes()
    old = _varint(2 * 2 * HUGE)
    assert data.count(old) >= 1
    path.write_bytes(data.replace(old, _varint(2 * 108, len(old))))
    assert pq.ParquetFile(path).metadata.row_group(0).column(1).num_values == 108  # the footer now lies
    return path


def _json_row(path: Path) -> Path:
    """A 60 MB JSON track whose only frame holds 15 M body values."""
    path.write_text('{"width": 64, "height": 64, "fps": 8, "frames": [{"body": [' + "0.0," * 15_000_000 + "0.0]}]}")
    return path


PROBE = """
import resource, sys
import pyarrow.parquet
from pipelines.conditioning.poses.keypoints import pose_track_header, read_pose_track
from pipelines.media.errors import InputError

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

for warm in sys.argv[3:]:  # small valid tracks: the libraries both paths use are loaded and warm
    read_pose_track(warm), pose_track_header(warm)
try:  # Linux: reset the peak (VmHWM) to the current RSS, so the call's own peak can be read
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
except OSError:
    before = None
if sys.argv[1]:
    try:
        {"header": pose_track_header, "read": read_pose_track}[sys.argv[2]](sys.argv[1])
        print("ACCEPTED")
    except InputError as exc:
        print("REFUSED", exc)
print("CALL_KB", -1 if before is None else status("VmHWM") - before)
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _probe(target: str, fn: str, warm: list[str]) -> tuple[str, int, int]:
    """Run one call in a fresh interpreter: ``(stdout, the call's peak RSS growth in KB or -1, the process's peak
    RSS in KB)``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", PROBE, target, fn, *warm], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300, check=True).stdout
    nums = dict(line.split() for line in out.splitlines() if line.split()[0] in ("CALL_KB", "MAXRSS_KB"))
    return out, int(nums["CALL_KB"]), int(nums["MAXRSS_KB"])


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    d = tmp_path_factory.mktemp("warm")
    paths = [str(d / "w.parquet"), str(d / "w.json")]
    for p in paths:
        write_pose_track(_track(5), p)
    return paths


@pytest.mark.parametrize("fn", ["header", "read"])
@pytest.mark.parametrize("make", [_bomb, _understated, _json_row], ids=["parquet-2KB", "lying-footer", "json-60MB"])
def test_oversized_rows_are_refused_before_memory_grows(tmp_path, warm, make, fn):
    path = make(tmp_path / ("bomb.json" if make is _json_row else "bomb.parquet"))
    _, _, base = _probe("", fn, warm)  # the same interpreter, imports and warm-up, no call
    out, call, peak = _probe(str(path), fn, warm)
    assert f"REFUSED {path}:" in out and ("frames[0]" if make is _json_row else "column 'body'") in out, out
    print(f"{make.__name__} {fn}: peak RSS of the call {call:+d} KB; process peak {peak - base:+d} KB over the "
          f"import-only process")
    assert peak - base < 50 * 1024 and call < 50 * 1024, out


def test_refusals_name_the_problem(tmp_path):
    bomb, lie = _bomb(tmp_path / "a.parquet"), _understated(tmp_path / "b.parquet")
    with pytest.raises(InputError, match=r"a\.parquet: row group 0, column 'body': the footer claims 25000000 values"):
        pose_track_header(str(bomb))
    with pytest.raises(InputError, match=r"'body': the page headers claim 25000000 values .* the 54 a frame holds"):
        read_pose_track(str(lie))
    row = _json_row(tmp_path / "c.json")
    with pytest.raises(InputError, match=r"c\.json: .*frames\[0\] is longer than 65536 characters"):
        read_pose_track(str(row))


def _escaped_json(path: Path, n: int) -> Path:
    frame = ('{"frame": %d, "bod\\u0079": [' + ", ".join(["1.5"] * 54) + '], "h\\u0061nds": ['
             + ", ".join(["2"] * 126) + '], "flags": 0}')
    path.write_text('{"mf_pose_version": "1", "w\\u0069dth": 64, "height": 48, "fps": 8.0, "fr\\u0061mes": ['
                    + ", ".join(frame % i for i in range(n)) + "]}")
    return path


def test_escaped_keys_are_the_keys_they_decode_to(tmp_path):
    path = _escaped_json(tmp_path / "esc.json", 20_000)
    frames, fps = pose_track_header(str(path))
    assert (frames, fps) == (20_000, 8.0) and frames / fps == 2500.0  # a 120 s duration limit refuses it
    track = read_pose_track(str(path))
    assert len(track) == frames and track.size == (48, 64)
    assert np.all(track.body == 1.5) and np.all(track.hands == 2.0)
    (tmp_path / "nobody.json").write_text('{"width": 4, "height": 4, "fps": 1, "frames": [{"bodyx": []}]}')
    with pytest.raises(InputError, match=r"frames\[0\] must be an object with a 'body' list"):
        pose_track_header(str(tmp_path / "nobody.json"))
    (tmp_path / "twice.json").write_text('{"frames": [], "fr\\u0061mes": []}')
    with pytest.raises(InputError, match="duplicate key 'frames'"):
        read_pose_track(str(tmp_path / "twice.json"))


@pytest.mark.parametrize("ext", ["parquet", "json"])
@pytest.mark.parametrize("fps", [1e300, math.inf, math.nan, 0.0, -1.0, 1000.5])
def test_a_rate_outside_0_to_1000_is_refused(tmp_path, ext, fps):
    path = str(tmp_path / f"t.{ext}")
    write_pose_track(_track(4, fps), path)
    with pytest.raises(InputError, match=r"t\.\w+: pose track fps must be positive and at most 1000, got"):
        pose_track_header(path)
    if fps == 0:  # the reader reads a zero rate as unknown: the source's rate is used
        assert read_pose_track(path).fps == 0.0
    else:
        with pytest.raises(InputError, match="fps must be positive and at most 1000"):
            read_pose_track(path)


def test_the_rate_bound_is_inclusive_and_a_long_value_is_cut(tmp_path):
    write_pose_track(_track(4, 1000.0), str(tmp_path / "ok.parquet"))
    assert pose_track_header(str(tmp_path / "ok.parquet")) == (4, 1000.0)
    pq.write_table(_table([np.zeros(54)] * 2, fps="9" * 100_000), tmp_path / "long.parquet")
    with pytest.raises(InputError) as info:
        pose_track_header(str(tmp_path / "long.parquet"))
    assert "fps must be positive" in str(info.value) and len(str(info.value)) < 80 + 120 + len(str(tmp_path))


@pytest.mark.parametrize("ext", ["parquet", "json"])
def test_what_write_pose_track_writes_round_trips(tmp_path, ext):
    track, path = _track(50, 12.5, seed=3), str(tmp_path / f"t.{ext}")
    write_pose_track(track, path)
    assert pose_track_header(path) == (50, 12.5)
    back = read_pose_track(path)
    exact = (lambda a: a) if ext == "parquet" else (lambda a: a.round(3))  # the JSON writer rounds to 3 decimals
    np.testing.assert_array_equal(back.body, exact(track.body))
    np.testing.assert_array_equal(back.hands, exact(track.hands))
    np.testing.assert_array_equal(back.flags, track.flags)
    assert back.size == track.size and back.fps == track.fps and back.body.dtype == np.float32


def test_row_groups_and_nested_lists_are_read(tmp_path):
    track = _track(23)
    pq.write_table(track.to_table(), tmp_path / "groups.parquet", row_group_size=5)
    np.testing.assert_array_equal(read_pose_track(str(tmp_path / "groups.parquet")).hands, track.hands)
    nested = pa.table({"body": pa.array(track.body.tolist(), pa.list_(pa.list_(pa.float64()))),
                       "hands": pa.array(track.hands.tolist(), pa.list_(pa.list_(pa.list_(pa.float32()))))})
    pq.write_table(nested.replace_schema_metadata({"width": "640", "height": "480", "fps": "24"}),
                   tmp_path / "nested.parquet")
    back = read_pose_track(str(tmp_path / "nested.parquet"))
    np.testing.assert_array_equal(back.body, track.body)
    np.testing.assert_array_equal(back.hands, track.hands)
    assert list(back.flags) == [0] * 23


def test_a_wrong_list_length_in_one_row_is_refused_naming_the_row(tmp_path):
    body = [np.zeros(54, np.float32)] * 20
    body[12] = np.zeros(53, np.float32)
    pq.write_table(_table(body), tmp_path / "short.parquet", row_group_size=5)
    with pytest.raises(InputError, match=r"short\.parquet: column 'body', row 12: a list of 53 values where \[54\]"):
        read_pose_track(str(tmp_path / "short.parquet"))
    hands = [np.zeros(126, np.float32)] * 4
    hands[1], hands[2] = np.zeros(125, np.float32), np.zeros(127, np.float32)  # the chunk's total is right
    pq.write_table(_table([np.zeros(54)] * 4, hands=hands), tmp_path / "uneven.parquet")
    with pytest.raises(InputError, match=r"column 'hands', row 1: a list of 125 values where \[126\] belongs"):
        read_pose_track(str(tmp_path / "uneven.parquet"))
    hands[1] = np.zeros(126, np.float32)  # one value too many: over the chunk's budget, refused from the footer
    pq.write_table(_table([np.zeros(54)] * 4, hands=hands), tmp_path / "long.parquet")
    with pytest.raises(InputError, match=r"column 'hands': the footer claims 505 values .* for 4 rows"):
        pose_track_header(str(tmp_path / "long.parquet"))
    doc = json.loads(_track(5).to_json())
    doc["frames"][3]["body"] = doc["frames"][3]["body"][:-1]
    (tmp_path / "short.json").write_text(json.dumps(doc))
    for fn in (pose_track_header, read_pose_track):
        with pytest.raises(InputError, match=r"short\.json: frames\[3\]\.body must be 54 numbers .* got shape \[53\]"):
            fn(str(tmp_path / "short.json"))


def test_frame_and_size_caps_refuse_before_reading(tmp_path):
    for ext in ("parquet", "json"):
        path = str(tmp_path / f"t.{ext}")
        write_pose_track(_track(30), path)
        assert pose_track_header(path, max_frames=30)[0] == len(read_pose_track(path, max_frames=30)) == 30
        with pytest.raises(InputError, match="frame|byte limit"):
            pose_track_header(path, max_frames=29)
        with pytest.raises(InputError, match=r"pose track of \d+ bytes exceeds the 1000 byte limit"):
            read_pose_track(path, max_bytes=1000)
    with pytest.raises(InputError, match="pose track holds 30 frames, over the 29 frame limit"):
        read_pose_track(str(tmp_path / "t.parquet"), max_frames=29)
    with pytest.raises(InputError, match=r"JSON pose track of \d+ bytes exceeds the \d+ byte limit \(2 frames\)"):
        read_pose_track(str(tmp_path / "t.json"), max_frames=2)


@pytest.mark.parametrize("text, match", [
    ('{"width": 4, "height": 4, "fps": 1, "frames": [{"body": [1e999] }]}', r"frames\[0\]\.body must be 54"),
    ('{"width": 4, "height": 4, "fps": 1, "frames": [{"body": ' + str([[0.0, 0.0, 1e300]] * 18) + "}]}",
     r"frames\[0\]\.body holds non-finite keypoints"),
    ('{"width": 4, "height": 4, "fps": 1, "frames": [{"body": ' + str([0] * 54) + ', "flags": true}]}',
     r"frames\[0\]\.flags must be an integer"),
    ('{"width": "' + "9" * 5000 + '", "height": 4, "fps": 1, "frames": [{"body": ' + str([0] * 54) + "}]}",
     r"width must be an integer in \[1, 65536\], got '9999.*\.\.\.$"),
    ('{"width": 4, "height": 4, "fps": 1, "frames": [{"body": ' + str([0] * 54) + "}],}",
     r"JSON at character \d+: a key: Expecting value"),
    ('{"width": 4, "height": 4, "fps": 1, "frames": []} trailing', "data after the pose track object"),
    ('{"width": 4, "height": 4, "fps": 1, "frames": []}', "holds no frames"),
    ('[' * 100_000 + ']' * 100_000, r"expected '\{'"),
])
def test_malformed_json_is_refused_clearly(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        pose_track_header(str(path))
    assert str(info.value).startswith(f"{path}: ") and len(str(info.value)) < 200 + len(str(path))
