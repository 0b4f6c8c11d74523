"""Arrow types derived from dataclasses: one mapping from Python type hints to Arrow, so no schema of the pipeline
is a hand-kept copy of the dataclass it stores.

:func:`arrow_struct` / :func:`arrow_schema` map a dataclass's fields, in declaration order (the order of the
columns: Parquet files written with them are read by users), by their type hints:

=======================================  =================================
hint                                     Arrow
=======================================  =================================
``str`` / ``int`` / ``float`` / ``bool``  string / int64 / float64 / bool
``bytes``                                binary
``datetime``                             timestamp[us, tz=UTC]
``Optional[X]``                          X (every field is nullable unless declared otherwise)
``list[X]``, ``tuple[X, ...]``,          list<X>
``tuple[X, X]``
``dict[K, V]``                           map<K, V>
a dataclass                              struct of its fields
=======================================  =================================

A field that needs another Arrow type (an int32 column, a large binary, a struct for a ``dict[str, Any]``) or is
not nullable says so on its metadata: ``x: Optional[int] = arrow_field(pa.int32(), default=None)``. Any other
hint raises ``TypeError`` naming the field's hint.

:func:`to_arrow` / :func:`from_arrow` move values across: an instance → a row that ``pa.Table.from_pylist`` takes
under its struct/schema, and such a row (from ``to_pylist``) → the instance again. Structs of a dataclass hint become
that dataclass, maps dicts, and lists tuples where the hint is a tuple; nulls stay ``None``. Pure pyarrow: no Ray.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from datetime import datetime
from typing import Any, Optional, Union

import pyarrow as pa

ARROW_TYPE = "arrow_type"  # field metadata key: the pa.DataType of the field, instead of its hint's
ARROW_NULLABLE = "arrow_nullable"  # field metadata key: False for a non-nullable field

_SCALARS = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(), bytes: pa.binary(),
            datetime: pa.timestamp("us", tz="UTC")}


def arrow_field(type: Optional[pa.DataType] = None, *, nullable: bool = True, **field_kwargs: Any) -> Any:
    """``dataclasses.field(**field_kwargs)`` that declares the field's Arrow ``type`` and/or ``nullable=False``."""
    metadata = dict(field_kwargs.pop("metadata", None) or {})
    if type is not None:
        metadata[ARROW_TYPE] = type
    if not nullable:
        metadata[ARROW_NULLABLE] = False
    return dataclasses.field(metadata=metadata, **field_kwargs)


def arrow_type(hint: Any) -> pa.DataType:
    """The Arrow type of one type hint (see the module docstring)."""
    hint = _optional_of(hint)
    if dataclasses.is_dataclass(hint):
        return arrow_struct(hint)
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        items = {a for a in args if a is not Ellipsis}
        if len(items) == 1:
            return pa.list_(arrow_type(items.pop()))
    if origin is dict and len(args) == 2:
        return pa.map_(arrow_type(args[0]), arrow_type(args[1]))
    raise TypeError(f"no Arrow type for {hint!r}: declare one on the field (arrow_field(type))")


def arrow_fields(cls: type) -> list[pa.Field]:
    """The Arrow fields of dataclass ``cls``, in declaration order."""
    return list(_fields(cls))


def arrow_struct(cls: type) -> pa.StructType:
    return pa.struct(arrow_fields(cls))


def arrow_schema(cls: type) -> pa.Schema:
    return pa.schema(arrow_fields(cls))


def to_arrow(obj: Any) -> dict[str, Any]:
    """Dataclass instance ``obj`` as a row of :func:`arrow_struct` of its class."""
    return {f.name: _encode(getattr(obj, f.name), f.type) for f in _fields(type(obj))}


def from_arrow(cls: type, row: dict[str, Any]) -> Any:
    """A row of :func:`arrow_struct` of ``cls`` (as ``to_pylist`` gives it) → the ``cls`` instance; a field absent
    from ``row`` takes its default."""
    hints = _hints(cls)
    return cls(**{f.name: _decode(row[f.name], hints[f.name], f.type) for f in _fields(cls) if f.name in row})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _fields(cls: type) -> tuple[pa.Field, ...]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        typ = f.metadata.get(ARROW_TYPE)
        if typ is None:
            try:
                typ = arrow_type(hints[f.name])
            except TypeError as exc:
                raise TypeError(f"{cls.__name__}.{f.name}: {exc}") from None
        out.append(pa.field(f.name, typ, nullable=f.metadata.get(ARROW_NULLABLE, True)))
    return tuple(out)


def _optional_of(hint: Any) -> Any:
    """``X`` of ``Optional[X]`` / ``X | None``; any other hint as is."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"no Arrow type for the union {hint!r}")
        return args[0]
    return hint


def _is_list(typ: pa.DataType) -> bool:
    return pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)


def _encode(value: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_struct(typ) and dataclasses.is_dataclass(value):
        return to_arrow(value)
    if pa.types.is_map(typ):
        return [(k, _encode(v, typ.item_type)) for k, v in value.items()]
    if _is_list(typ):
        return [_encode(v, typ.value_type) for v in value]
    return value


def _decode(value: Any, hint: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
    hint = _optional_of(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if pa.types.is_struct(typ):
        return from_arrow(hint, value) if dataclasses.is_dataclass(hint) else value
    if pa.types.is_map(typ):
        item = args[1] if origin is dict and len(args) == 2 else Any
        return {k: _decode(v, item, typ.item_type) for k, v in value}
    if _is_list(typ):
        item = next((a for a in args if a is not Ellipsis), Any)
        items = [_decode(v, item, typ.value_type) for v in value]
        return tuple(items) if origin is tuple else items
    return value
