"""The little of Thrift's compact protocol a Parquet page header needs, decoded from bytes already read.

:func:`decode` reads one value of a given type: structs become ``{field id: value}``, integers and booleans
themselves, everything else is skipped (``None``); nesting is bounded (16 levels) and a list or map may not claim
more elements than bytes are left. It raises ``IndexError`` when the buffer ends first (the caller may read more and
retry) and ``ValueError`` when the bytes are not Thrift; it never reads a file and allocates nothing per claimed
element. Used by :mod:`pipelines.conditioning.poses.track_parquet`.
"""
from __future__ import annotations

STRUCT = 12  # the Thrift compact type id of a struct (a PageHeader is one)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("Thrift varint too long")


def _zigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


def decode(buf: bytes, pos: int, kind: int, depth: int = 0):
    """One Thrift compact-protocol value of type ``kind`` at ``buf[pos]``: ``(value, end)``. Structs decode to
    ``{field id: value}``, integers and booleans to themselves, the rest is skipped (``None``); IndexError when
    ``buf`` ends first, ValueError when it is not Thrift."""
    if depth > 16 or not 1 <= kind <= 12:
        raise ValueError("not a Thrift page header")
    if kind in (1, 2):
        return kind == 1, pos
    if kind in (4, 5, 6):
        v, pos = _varint(buf, pos)
        return _zigzag(v), pos
    if kind in (3, 7, 8):
        n, pos = (1, pos) if kind == 3 else (8, pos) if kind == 7 else _varint(buf, pos)
        if pos + n > len(buf):
            raise IndexError(pos)
        return None, pos + n
    if kind == STRUCT:
        return _struct(buf, pos, depth)
    return None, _skip_container(buf, pos, kind, depth)


def _struct(buf: bytes, pos: int, depth: int) -> tuple[dict, int]:
    """The fields of the struct at ``buf[pos]`` (field ids delta- or zigzag-coded) up to its stop byte."""
    fields, fid = {}, 0
    while b := buf[pos]:
        pos += 1
        if b >> 4:
            fid += b >> 4
        else:
            v, pos = _varint(buf, pos)
            fid = _zigzag(v)
        fields[fid], pos = decode(buf, pos, b & 15, depth + 1)
    return fields, pos + 1


def _skip_container(buf: bytes, pos: int, kind: int, depth: int) -> int:
    """The end of the map (``kind`` 11), list or set at ``buf[pos]``, its elements decoded and dropped."""
    if kind == 11:  # map
        count, pos = _varint(buf, pos)
        kinds = (buf[pos] >> 4, buf[pos] & 15) if count else ()
        pos += bool(count)
    else:  # list, set
        count, kinds, pos = buf[pos] >> 4, (buf[pos] & 15,), pos + 1
        if count == 15:
            count, pos = _varint(buf, pos)
    if pos + count > len(buf):  # every element takes a byte at least
        raise IndexError(pos)
    for _ in range(count):
        for k in kinds:
            pos = pos + 1 if k in (1, 2) else decode(buf, pos, k, depth + 1)[1]
    return pos
