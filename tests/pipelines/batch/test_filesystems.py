"""Outputs commit on any filesystem: temporary files live beside their destination, so a commit is never a rename
across filesystems (the system temp directory on a tmpfs and the output on the disk, or the other way round)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from pipelines.media import storage
from pipelines.media.encode import VideoWriter, probe_output

SHM = Path("/dev/shm")


def _device(path: Path) -> int:
    return os.stat(path).st_dev


def _pairs(tmp_path: Path):
    if not SHM.is_dir():
        pytest.skip("no /dev/shm on this machine")
    shm = Path(tempfile.mkdtemp(prefix="mf-fs-test-", dir=SHM))
    disk = tmp_path / "disk"
    disk.mkdir()
    if _device(shm) == _device(disk):
        pytest.skip("/dev/shm and the test folder are one filesystem here")
    return [(shm, disk), (disk, shm)]  # (system temp directory, output folder)


@pytest.fixture
def audio_source(tmp_path) -> Path:
    path = tmp_path / "with_audio.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=s=64x48:r=10:d=1", "-f", "lavfi",
                    "-i", "sine=d=1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
                    str(path)], check=True)
    return path


def test_video_commits_across_filesystems(tmp_path, monkeypatch, audio_source):
    for temp, out in _pairs(tmp_path):
        monkeypatch.setattr(tempfile, "tempdir", str(temp))
        target = out / "videos" / "edit.mp4"
        with VideoWriter(str(target), fps=10, audio_from=str(audio_source), preset="ultrafast") as w:
            for k in range(10):
                w.write(np.full((48, 64, 3), 20 * k, np.uint8))
        facts = probe_output(str(target))
        assert facts["frames"] == 10 and facts["has_audio"], facts
        assert sorted(p.name for p in target.parent.iterdir()) == ["edit.mp4"]  # no scratch left beside it
        for name, text in (("marker.json", "{}"), ("bytes.bin", "x")):
            storage.atomic_write_text(str(out / name), text)
            assert (out / name).read_text() == text


def test_a_run_with_temp_on_tmpfs_and_out_on_disk(tmp_path):
    """``mf retarget`` as a user runs it, with ``TMPDIR`` on a tmpfs and ``--out`` on the disk."""
    temp, out = _pairs(tmp_path)[0]
    from jobs.commands.demo import make_demo_inputs

    demo = make_demo_inputs(str(tmp_path / "inputs"), frames=8, fps=8, size=64, steps=2, window=8, overlap=0)
    import json

    row = json.loads(Path(demo.manifest).read_text())  # and a second row whose own output is on the tmpfs
    second = {**row, "request_id": "own-output", "output": str(temp / "own" / "own-output.mp4")}
    Path(demo.manifest).write_text(json.dumps(row) + "\n" + json.dumps(second) + "\n")
    env = {**os.environ, "TMPDIR": str(temp), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "retarget", demo.manifest, "--out", str(out / "run"),
                           "--actors", "1"], env=env, capture_output=True, text=True, timeout=600,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "run" / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["succeeded", "succeeded"], rows
    assert (out / "run" / "videos" / "demo-waving.mp4").stat().st_size > 0
    assert (temp / "own" / "own-output.mp4").stat().st_size > 0


def test_a_serve_root_on_tmpfs_with_temp_on_disk(tmp_path, fixture_cases):
    """``mf serve`` with its storage root on a tmpfs and ``TMPDIR`` on the disk: an upload edited and served."""
    import requests

    from tests.jobs.media_helpers import write_clip
    from tests.jobs.net_helpers import mf_serve
    from tests.jobs.test_serve import PARAMS, TOKEN_A, _auth, _wait

    shm, _ = _pairs(tmp_path)[0]
    src = write_clip(fixture_cases, "s1", tmp_path / "media" / "source.mp4", frames=8, side=256)
    drv = write_clip(fixture_cases, "m1", tmp_path / "media" / "driving.mp4", frames=8, side=256)
    with mf_serve(tmp_path / "serve", TOKEN_A, root=shm / "root") as (_, base):
        files = {"source": ("source.mp4", src.read_bytes()), "driving": ("driving.mp4", drv.read_bytes())}
        r = requests.post(base + "/v1/edits", headers=_auth(), data=PARAMS, files=files, timeout=120)
        assert r.status_code == 202, r.text
        state = _wait(base, r.json()["id"])
        assert state["state"] == "succeeded", state
        video = requests.get(base + f"/v1/edits/{r.json()['id']}/video", headers=_auth(), timeout=60)
        assert video.status_code == 200 and len(video.content) > 0


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs of its own (root only: mount); unmounted at the end."""
    point = tmp_path / "small"
    point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_full_or_read_only_serve_root_is_answered_clearly(tmp_path, fixture_cases, small_tmpfs):
    """Uploads onto a full root answer 507, onto a read-only root 503, each naming the problem (no path), and
    keep no queue slot: the service answers the next edit once storage is back."""
    import requests

    from tests.jobs.media_helpers import write_clip
    from tests.jobs.net_helpers import mf_serve
    from tests.jobs.test_serve import PARAMS, TOKEN_A, _auth

    src = write_clip(fixture_cases, "s1", tmp_path / "media" / "source.mp4", frames=8, side=256)
    drv = write_clip(fixture_cases, "m1", tmp_path / "media" / "driving.mp4", frames=8, side=256)
    padded = src.read_bytes() + b"\0" * (1536 * 1024)  # more than the tmpfs holds
    with mf_serve(tmp_path / "serve", TOKEN_A, root=small_tmpfs / "root") as (_, base):
        def post(source: bytes) -> requests.Response:
            files = {"source": ("source.mp4", source), "driving": ("driving.mp4", drv.read_bytes())}
            return requests.post(base + "/v1/edits", headers=_auth(), data=PARAMS, files=files, timeout=120)

        for _ in range(5):  # more than the token's queue share (4): refused edits hold no slot
            r = post(padded)
            assert r.status_code == 507 and "storage is full (ENOSPC)" in r.json()["detail"], r.text
            assert str(small_tmpfs) not in r.text and r.headers.get("retry-after")
        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
        r = post(src.read_bytes())
        assert r.status_code == 503 and "storage is unavailable (EROFS)" in r.json()["detail"], r.text
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
        r = post(src.read_bytes())
        assert r.status_code == 202, r.text
