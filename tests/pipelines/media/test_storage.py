from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from pipelines.media import storage


@pytest.fixture(params=["local", "file", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "root")
        return
    if request.param == "file":
        yield "file://" + str(tmp_path / "root")
        return
    uri = f"memory://mf-test-{uuid.uuid4().hex[:8]}"
    yield uri
    storage.remove(uri)


def test_join_keeps_scheme():
    assert storage.join("s3://b/run", "videos", "x.mp4") == "s3://b/run/videos/x.mp4"
    assert storage.join("memory://r/", "/a/", "b") == "memory://r/a/b"
    assert storage.join("/tmp/x", "y") == "/tmp/x/y"
    assert storage.parent("s3://b/run/x.mp4") == "s3://b/run"
    assert storage.basename("s3://b/run/x.mp4") == "x.mp4"
    assert storage.protocol_of("/a/b") == "file" and storage.protocol_of("memory://a") == "memory"


def test_atomic_write_and_read(root):
    uri = storage.join(root, "sub", "a.bin")
    assert not storage.exists(uri)
    storage.atomic_write_bytes(uri, b"hello")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"hello"
    storage.atomic_write_bytes(uri, b"again")  # overwrite commits the new content
    assert storage.read_bytes(uri) == b"again"
    assert storage.listdir(storage.join(root, "sub")) == ["a.bin"]  # no temporary left behind


def test_atomic_open_failure_leaves_nothing(root):
    uri = storage.join(root, "b.bin")
    with pytest.raises(RuntimeError):
        with storage.atomic_open(uri) as f:
            f.write(b"partial")
            raise RuntimeError("killed")
    assert not storage.exists(uri)
    assert [n for n in storage.listdir(root) if storage.TMP_MARK in n] == []


def test_atomic_local_file(root):
    uri = storage.join(root, "out", "v.bin")
    with storage.atomic_local_file(uri, suffix=".bin") as local:
        assert os.path.exists(local)
        with open(local, "wb") as f:
            f.write(b"x" * 1000)
        assert not storage.exists(uri)  # nothing visible before the commit
    assert storage.read_bytes(uri) == b"x" * 1000
    assert not os.path.exists(local)
    with pytest.raises(ValueError):
        with storage.atomic_local_file(storage.join(root, "out", "w.bin")) as local:
            open(local, "wb").write(b"y")
            raise ValueError("encoder failed")
    assert not storage.exists(storage.join(root, "out", "w.bin"))
    assert storage.listdir(storage.join(root, "out")) == ["v.bin"]


def test_local_copy(root):
    uri = storage.join(root, "c.txt")
    storage.atomic_write_text(uri, "content")
    with storage.local_copy(uri) as p:
        assert open(p).read() == "content"


@pytest.mark.parametrize("compress", [False, True])
def test_npz_roundtrip(root, compress):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(5, 16, 24, 3), dtype=np.uint8)
    idx = np.arange(10, 15)
    uri = storage.join(root, "windows", "w0.npz")
    n = storage.write_npz(uri, compress=compress, frames=frames, frame_indices=idx)
    assert n > 0
    got = storage.read_npz(uri)
    assert got["frames"].dtype == np.uint8
    np.testing.assert_array_equal(got["frames"], frames)
    np.testing.assert_array_equal(got["frame_indices"], idx)


def test_copy_across_filesystems(tmp_path):
    src = str(tmp_path / "src.bin")
    storage.atomic_write_bytes(src, b"abc" * 1000)
    dst = f"memory://mf-copy-{uuid.uuid4().hex[:8]}/d/x.bin"
    storage.copy_file(src, dst)
    assert storage.read_bytes(dst) == b"abc" * 1000
    storage.remove(dst)
    assert not storage.exists(dst)
