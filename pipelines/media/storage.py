"""fsspec helpers: every path in the pipeline is a URI (local path, ``file://``, ``memory://``, ``s3://``, ...).

Atomic writes: data goes to a temporary name next to the target (``.<name>.tmp-<hex>``) and is committed by a move.
On local disks the move is ``os.replace`` (atomic); on object stores without rename fsspec copies then deletes,
which still never exposes a partial object under the final name. A killed writer leaves at most a ``.tmp-`` file,
never a half-written target.

Window frames are stored as ``.npz`` (optionally zlib-compressed) of uint8 arrays.

Content identity (:func:`content_identity`): what tells whether an input changed, without reading it — the
filesystem's checksum or ETag where fsspec reports one (object stores), otherwise size and modification time; for a
folder of frames, a hash over its files' identities.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from typing import IO

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"
# Parquet is read with use_threads=False everywhere (manifests and pose tracks are small): with pyarrow 26 a process
# that exits after a threaded read aborts ("terminate called without an active exception") in about half the runs.
PARQUET_THREADS = False
CONTENT_KEYS = ("ETag", "etag", "checksum", "md5", "content_md5", "crc32c")  # content hashes fsspec backends report
MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "created")


def open_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of ``uri`` and the path within it."""
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


def protocol_of(uri: str) -> str:
    """``"file"`` for local paths, otherwise the URI scheme (``memory``, ``s3``, ...)."""
    uri = str(uri)
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0]


def is_local(uri: str) -> bool:
    fs, _ = open_fs(uri)
    return isinstance(fs, LocalFileSystem)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI, keeping its scheme (``join("s3://b/run", "videos", "x.mp4")``)."""
    uri = str(uri)
    clean = [str(p).strip("/") for p in parts if str(p).strip("/")]
    if not clean:
        return uri
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *clean) if rest else f"{scheme}://" + posixpath.join(*clean)
    return os.path.join(uri, *clean)


def absolute(uri: str) -> str:
    """A local path made absolute (Ray workers do not share the caller's working directory); URIs unchanged."""
    return uri if "://" in str(uri) else os.path.abspath(uri)


def resolve(base: str, uri: str) -> str:
    """The one rule for paths named inside a file (manifests, dataset specs): a relative path resolves against
    ``base``, the folder of the file that names it; absolute paths and URIs (``scheme://``) stay as they are."""
    if "://" in uri or os.path.isabs(uri) or not base:
        return uri
    return join(base, uri)


def parent(uri: str) -> str:
    uri = str(uri).rstrip("/")
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest)}"
    return os.path.dirname(uri) or "."


def basename(uri: str) -> str:
    return posixpath.basename(str(uri).rstrip("/"))


def exists(uri: str) -> bool:
    fs, path = open_fs(uri)
    return bool(fs.exists(path))


def makedirs(uri: str) -> None:
    fs, path = open_fs(uri)
    fs.makedirs(path, exist_ok=True)


def remove(uri: str, missing_ok: bool = True) -> None:
    fs, path = open_fs(uri)
    try:
        fs.rm(path, recursive=fs.isdir(path))
    except FileNotFoundError:
        if not missing_ok:
            raise


def listdir(uri: str) -> list[str]:
    """Names (not paths) in a directory; empty when it does not exist."""
    fs, path = open_fs(uri)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def read_bytes(uri: str) -> bytes:
    fs, path = open_fs(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def _tmp_name(path: str, fs: fsspec.AbstractFileSystem) -> str:
    d, name = posixpath.split(path) if not isinstance(fs, LocalFileSystem) else os.path.split(path)
    tmp = f".{name}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    return os.path.join(d, tmp) if isinstance(fs, LocalFileSystem) else posixpath.join(d, tmp)


def _commit(fs: fsspec.AbstractFileSystem, tmp: str, path: str) -> None:
    if isinstance(fs, LocalFileSystem):
        os.replace(tmp, path)  # atomic on one filesystem
    else:
        fs.mv(tmp, path)  # rename where supported, copy + delete otherwise


@contextlib.contextmanager
def atomic_open(uri: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``uri`` for writing; commit it to ``uri`` on success, delete it on error."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports 'wb' and 'w', got {mode!r}")
    fs, path = open_fs(uri)
    d = os.path.dirname(path) if isinstance(fs, LocalFileSystem) else posixpath.dirname(path)
    if d:
        fs.makedirs(d, exist_ok=True)
    tmp = _tmp_name(path, fs)
    try:
        with fs.open(tmp, mode) as f:
            yield f
        _commit(fs, tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def atomic_write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically."""
    with atomic_open(uri, "wb") as f:
        f.write(data)


def atomic_write_text(uri: str, text: str) -> None:
    atomic_write_bytes(uri, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_local_file(uri: str, suffix: str = "") -> Iterator[str]:
    """A local path for a tool that writes files itself (ffmpeg); on success its content is committed to ``uri``.

    For local targets the temporary file lies next to the target and is renamed into place; for remote targets it
    lies in the system temp directory, is uploaded under a temporary name and then moved into place.
    """
    fs, path = open_fs(uri)
    if isinstance(fs, LocalFileSystem):
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{TMP_MARK}", suffix=suffix, dir=d)
        os.close(fd)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    fd, tmp = tempfile.mkstemp(prefix="mf-upload-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        d = posixpath.dirname(path)
        if d:
            fs.makedirs(d, exist_ok=True)
        remote_tmp = _tmp_name(path, fs)
        try:
            fs.put_file(tmp, remote_tmp)
            _commit(fs, remote_tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.rm(remote_tmp)
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def scratch_dir(uri: str, tag: str = "work") -> str:
    """A new empty local folder for the files a tool writes on its way to ``uri``: beside the target when the
    target is local (so committing them is a rename on one filesystem, whatever disk ``uri`` is on), in the system
    temp directory otherwise (they are uploaded from there). The caller removes it."""
    fs, path = open_fs(uri)
    if isinstance(fs, LocalFileSystem):
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        return tempfile.mkdtemp(prefix=f".{os.path.basename(path)}{TMP_MARK}{tag}-", dir=d)
    return tempfile.mkdtemp(prefix=f"mf-{tag}-")


@contextlib.contextmanager
def local_copy(uri: str, suffix: str | None = None) -> Iterator[str]:
    """A local path holding the content of ``uri`` (the file itself when local, else a temporary download)."""
    fs, path = open_fs(uri)
    if isinstance(fs, LocalFileSystem):
        yield path
        return
    if suffix is None:
        suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix="mf-dl-", suffix=suffix)
    os.close(fd)
    try:
        fs.get_file(path, tmp)
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_npz(uri: str, compress: bool = False, **arrays: np.ndarray) -> int:
    """Write arrays (e.g. ``frames=(F, H, W, 3) uint8``) to ``uri`` as ``.npz`` atomically; returns the byte size."""
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    data = buf.getvalue()
    atomic_write_bytes(uri, data)
    return len(data)


def read_npz(uri: str) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` written by :func:`write_npz`."""
    data = read_bytes(uri)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def copy_file(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` (any filesystems) atomically at the destination, streaming in chunks."""
    sfs, spath = open_fs(src)
    with sfs.open(spath, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, length=4 << 20)


def _file_identity(info: dict) -> str:
    for key in CONTENT_KEYS:
        if info.get(key):
            return f"{key.lower()}:{str(info[key]).strip(chr(34))}"
    mtime = next((info[k] for k in MTIME_KEYS if info.get(k) is not None), None)
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"size:{info.get('size')};mtime:{mtime}"


def content_identity(uri: str) -> str:
    """The content identity of a file or folder (see the module docstring). Raises ``FileNotFoundError``."""
    fs, path = open_fs(uri)
    info = fs.info(path)
    if info.get("type") != "directory":
        return _file_identity(info)
    entries = sorted((posixpath.relpath(k, path), _file_identity(v)) for k, v in fs.find(path, detail=True).items())
    return "tree:" + hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:32]


def check_writable(uri: str) -> None:
    """Raise ``OSError`` (or the filesystem's error) unless a file can be written under the folder ``uri``."""
    probe = join(uri, f".mf-write-check-{uuid.uuid4().hex[:8]}")
    atomic_write_bytes(probe, b"")
    remove(probe)


def remove_tree(uri: str) -> None:
    """Delete a folder and everything below it (nothing when it does not exist)."""
    fs, path = open_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def npz_shapes(uri: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of the arrays of an ``.npz`` file, from their headers only (no array data is read).
    Raises (``zipfile.BadZipFile``, ``ValueError``, ``OSError``) for a file that is not a readable npz."""
    fs, path = open_fs(uri)
    out = {}
    with fs.open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
        for name in zf.namelist():
            with zf.open(name) as member:
                version = np.lib.format.read_magic(member)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(member)
            out[name.removesuffix(".npy")] = (tuple(shape), dtype)
    return out

