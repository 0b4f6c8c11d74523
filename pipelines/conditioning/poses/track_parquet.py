"""Parquet pose tracks read within their limits: the footer and every page header are checked before any data is
decoded, then each column is read row group by row group into one preallocated array.

:func:`read_parquet` returns ``(columns, meta)`` like :func:`~pipelines.conditioning.poses.track_json.read_json`:
``frame`` (and, when ``keep``, ``flags``/``body``/``hands``; keypoints flat float32) over the file's rows, and the
schema metadata as text. What is refused and why (footer size, values and decompressed bytes a column chunk may
claim, by its footer and by its page headers, per-row list lengths) is the contract in the module docstring of
:mod:`pipelines.conditioning.poses.keypoints`; the numbers are in :mod:`~pipelines.conditioning.poses.track_limits`.
Refusals are :class:`~pipelines.media.errors.InputError`; columns other than the four known ones are never read.
"""
from __future__ import annotations

import numpy as np

from pipelines.conditioning.poses import thrift_compact
from pipelines.conditioning.poses.track_limits import (
    BYTES_PER_VALUE,
    MAX_FOOTER_BYTES,
    MAX_PAGES,
    PER_ROW,
    SHAPES,
    cut,
    shape_text,
)
from pipelines.media import storage
from pipelines.media.errors import InputError


def read_parquet(fh, uri: str, size: int, max_frames: int, keep: bool) -> tuple[dict, dict]:
    """Footer, then page headers, then the known columns (only ``frame`` unless ``keep``): ``(columns, meta)``."""
    pf, rows, data_end = _open(fh, uri, size, max_frames)
    md, schema = pf.metadata, pf.schema_arrow
    leaves = _parquet_columns(uri, md, schema)
    _check_pages(fh, uri, md, leaves, data_end)
    meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in (schema.metadata or {}).items()}
    cols = {name: _read_column(uri, pf, name, depth, rows) for name, (_, depth) in leaves.items()
            if keep or name == "frame"}
    cols.setdefault("frame", np.arange(md.num_rows))
    if keep:
        cols.setdefault("flags", np.zeros(md.num_rows, np.int32))
    return cols, meta


def _open(fh, uri: str, size: int, max_frames: int):
    """``(ParquetFile, rows per row group, end of the data pages)`` once the footer's size, the row groups' row
    counts and the frame count are checked; nothing but the footer is read."""
    import pyarrow.parquet as pq

    fh.seek(max(size - 8, 0))
    tail = fh.read(8)
    footer = int.from_bytes(tail[:4], "little")
    if size < 12 or tail[4:] != b"PAR1" or footer + 12 > size:
        raise InputError(uri, "unreadable Parquet pose track: truncated or not Parquet")
    if footer > MAX_FOOTER_BYTES:
        raise InputError(uri, f"Parquet footer of {footer} bytes exceeds the {MAX_FOOTER_BYTES} byte limit")
    try:
        fh.seek(0)
        pf = pq.ParquetFile(fh)
        md, _ = pf.metadata, pf.schema_arrow  # the schema too: an unreadable one is refused here
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        raise InputError(uri, f"unreadable Parquet pose track: {type(exc).__name__}") from None
    rows = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
    if sum(rows) != md.num_rows or min(rows, default=0) < 0:
        raise InputError(uri, "Parquet row groups disagree with the footer's row count")
    if md.num_rows > max_frames:
        raise InputError(uri, f"pose track holds {md.num_rows} frames, over the {max_frames} frame limit")
    return pf, rows, size - footer - 8


def _parquet_columns(uri: str, md, schema) -> dict[str, tuple[int, int]]:
    """``{name: (leaf column index, list depth)}`` of the known columns present: ``frame``/``flags`` integers,
    ``body``/``hands`` lists (nested as in SHAPES) of numbers, one leaf each. Other columns are never read."""
    import pyarrow as pa

    missing = {"body", "hands"} - set(schema.names)
    if missing:
        raise InputError(uri, f"pose track lacks columns {sorted(missing)}")
    leaves = {}
    for i in range(md.num_columns):
        name = md.schema.column(i).path.split(".")[0]
        if name in PER_ROW:
            if name in leaves:
                raise InputError(uri, f"pose track column {name!r} must be one list or integer column")
            leaves[name] = i
    out = {}
    for name, i in leaves.items():
        t = typ = schema.field(name).type
        depth = 0
        while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            t, depth = t.value_type, depth + 1
        depths = SHAPES.get(name, {0: ()})
        if depth not in depths or not (pa.types.is_integer(t) or name in SHAPES and pa.types.is_floating(t)):
            want = " or ".join(f"list{shape_text(s)}" for s in depths.values()) if name in SHAPES else "integers"
            raise InputError(uri, f"pose track column {name!r} is {cut(str(typ))}, expected {want} of numbers")
        out[name] = (i, depth)
    return out


def _check_pages(fh, uri: str, md, leaves: dict, data_end: int) -> None:
    """Refuse, before decoding, a column chunk that could decode to more than its rows' worth of values: by its
    footer claims and by its page headers (the values pyarrow will decode), each at most rows x PER_ROW values."""
    pages = [0]
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for name, (i, _) in leaves.items():
            cc, limit = rg.column(i), rg.num_rows * PER_ROW[name]
            budget = limit * BYTES_PER_VALUE + (64 << 10)
            where = f"row group {g}, column {name!r}"
            claims = [(cc.num_values, cc.total_uncompressed_size, "footer claims")]
            claims += [(*_walk_pages(fh, uri, cc, data_end, pages, where), "page headers claim")]
            for values, raw, source in claims:
                if values > limit or raw > budget:
                    raise InputError(uri, f"{where}: the {source} {values} values ({raw} bytes) for "
                                          f"{rg.num_rows} rows, more than the {PER_ROW[name]} a frame holds")


def _walk_pages(fh, uri: str, cc, data_end: int, pages: list, where: str) -> tuple[int, int]:
    """``(values, decompressed bytes)`` a column chunk's page headers declare (data or dictionary values, the
    larger count); ``pages[0]`` counts the headers read in the file (at most MAX_PAGES)."""
    start = cc.data_page_offset
    if cc.has_dictionary_page and cc.dictionary_page_offset and 0 < cc.dictionary_page_offset < start:
        start = cc.dictionary_page_offset
    end = start + cc.total_compressed_size
    if start < 4 or end > data_end:
        raise InputError(uri, f"{where}: pages outside the file's data")
    counts, raw, pos = [0, 0], 0, start
    while pos < end:
        pages[0] += 1
        if pages[0] > MAX_PAGES:
            raise InputError(uri, f"Parquet pose track has more than {MAX_PAGES} pages")
        header, length = _page_header(fh, uri, pos, end, where)
        kind, usize, csize = header.get(1), header.get(2), header.get(3)
        sub = header.get({0: 5, 2: 7, 3: 8}.get(kind, -1), {}) if kind in (0, 2, 3) else {}
        n = sub.get(1, 0) if isinstance(sub, dict) else -1
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (usize, csize, n)):
            raise InputError(uri, f"{where}: malformed page header at byte {pos}")
        counts[kind == 2] += n
        raw += usize
        pos += length + csize
    return max(counts), raw


def _page_header(fh, uri: str, pos: int, end: int, where: str) -> tuple[dict, int]:
    """The Thrift ``PageHeader`` at ``pos`` (read from 1 KiB, then 64 KiB, never past ``end``) and its length."""
    for n in (1 << 10, 1 << 16):
        fh.seek(pos)
        buf = fh.read(min(n, end - pos))
        try:
            return thrift_compact.decode(buf, 0, thrift_compact.STRUCT)
        except IndexError:
            if len(buf) < n:
                break
        except ValueError:
            break
    raise InputError(uri, f"{where}: unreadable page header at byte {pos}")


def _read_column(uri: str, pf, name: str, depth: int, rows: list) -> np.ndarray:
    """Column ``name`` over all row groups, one row group at a time, into one preallocated array: integers
    ``(rows,)`` int64, or keypoints ``(rows, PER_ROW[name])`` float32 with every row's lists checked."""
    out = np.empty((sum(rows), PER_ROW[name]) if name in SHAPES else sum(rows), np.float32 if depth else np.int64)
    start = 0
    for g, k in enumerate(rows):
        try:
            col = pf.read_row_group(g, columns=[name], use_threads=storage.PARQUET_THREADS).column(0).combine_chunks()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
            raise InputError(uri, f"unreadable Parquet pose track (row group {g}, column {name!r}): "
                                  f"{cut(str(exc))}") from None
        if len(col) != k:
            raise InputError(uri, f"row group {g}, column {name!r}: {len(col)} rows where the footer says {k}")
        out[start:start + k] = _list_rows(uri, col, name, depth, start) if depth else _int_rows(uri, col, name, start)
        start += k
    return out


def _first(uri: str, mask: np.ndarray, first: int, per: int, name: str, what: str) -> None:
    bad = np.flatnonzero(mask)
    if len(bad):
        raise InputError(uri, f"column {name!r}, row {first + int(bad[0]) // per}: {what}")


def _list_rows(uri: str, arr, name: str, depth: int, first: int) -> np.ndarray:
    """A row group's list column as ``(rows, PER_ROW[name])`` float32: every list of every row the exact length
    of SHAPES[name][depth], no nulls, finite; errors name the row (``first`` is the group's first row)."""
    import pyarrow.compute as pc

    shape, per = SHAPES[name][depth], 1
    for length in shape:
        _first(uri, arr.is_null().to_numpy(zero_copy_only=False), first, per, name, "a null list")
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != length)
        if len(bad):
            raise InputError(uri, f"column {name!r}, row {first + int(bad[0]) // per}: a list of {lengths[bad[0]]} "
                                  f"values where {shape_text(shape)} belongs")
        arr, per = arr.flatten(), per * length
    _first(uri, arr.is_null().to_numpy(zero_copy_only=False), first, per, name, "a null keypoint value")
    with np.errstate(over="ignore"):
        values = arr.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, per)
    _first(uri, ~np.isfinite(values).all(axis=1), first, 1, name, "non-finite keypoints")
    return values


def _int_rows(uri: str, arr, name: str, first: int) -> np.ndarray:
    """A row group's ``frame``/``flags`` column as int64, no nulls, within int32 (flags non-negative)."""
    _first(uri, arr.is_null().to_numpy(zero_copy_only=False), first, 1, name, "a null value")
    values = arr.to_numpy(zero_copy_only=False)
    low = -2 ** 31 if name == "frame" else 0
    _first(uri, (values < low) | (values >= 2 ** 31), first, 1, name, f"a value outside [{low}, 2**31)")
    return values.astype(np.int64)
