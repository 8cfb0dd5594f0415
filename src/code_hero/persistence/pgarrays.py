"""Arrays for PostgreSQL parameters in binary, each its elements' type said up front.

psycopg finds a list's dumper from its elements at every statement: it walks the list
for its first non-null element, asks for that element's dumper, and makes an array
dumper for it (`ListBinaryDumper.get_key`, `upgrade`). That came to 17-46 us a list
however short, where a value of one column is about 5 (in-process), and the statements
that write rows from arrays (`unnest`) send about 35 lists a run (issue 15). A list
made by `pg_array` has a class of its own, registered with a dumper that knows its
element type: psycopg finds it by the class alone, once a statement, and its elements
are dumped by psycopg's own dumper of that type (the same bytes as before). A jsonb[]
takes a `DumpedJsonb`'s bytes as they are: already the element psycopg's dumper makes."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, ClassVar

import psycopg
from psycopg import postgres
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Dumper, PyFormat
from psycopg.pq import Format
from psycopg.types.json import Jsonb
from psycopg.types.numeric import Int4, Int8

from code_hero.persistence.pgjsonb import DumpedJsonb

__all__ = ["pg_array"]

_HEAD = struct.Struct("!IIIII")  # dimensions, has a null, element oid, length, lower bound
_EMPTY = struct.Struct("!III")  # no dimension: an empty array
_LENGTH = struct.Struct("!i").pack
_NULL = _LENGTH(-1)


class _Array(list[Any]):
    """A list sent as an array of `element`'s PostgreSQL type."""

    element: ClassVar[type]
    type_name: ClassVar[str]


class _ArrayDumper(Dumper):
    format = Format.BINARY
    element: ClassVar[type]
    type_name: ClassVar[str]

    def __init__(self, cls: type, context: AdaptContext | None = None) -> None:
        super().__init__(cls, context)
        adapters = context.adapters if context is not None else psycopg.adapters
        dumper = adapters.get_dumper(self.element, PyFormat.BINARY)
        self._element = dumper(self.element, context)
        self._dump: Callable[[Any], Buffer | None] = self._element.dump
        if self.element is Jsonb:
            self._dump = _dumped_as_is(self._dump)
        info = postgres.types[self.type_name]
        self._element_oid = info.oid
        self.oid = info.array_oid

    def dump(self, obj: list[Any]) -> Buffer:
        if not obj:
            return _EMPTY.pack(0, 0, self._element_oid)
        dump = self._dump
        data: list[Buffer] = [b""]
        has_null = 0
        for item in obj:
            if item is None:
                data.append(_NULL)
                has_null = 1
                continue
            value = dump(item)
            assert value is not None  # only None dumps as None
            data.append(_LENGTH(len(value)))
            data.append(value)
        data[0] = _HEAD.pack(1, has_null, self._element_oid, len(obj), 1)
        return b"".join(data)


def _dumped_as_is(dump: Callable[[Any], Buffer | None]) -> Callable[[Any], Buffer | None]:
    """`dump`, but a `DumpedJsonb` is sent as the bytes it holds, not copied again."""

    def element(item: Any) -> Buffer | None:
        return item.obj if type(item) is DumpedJsonb else dump(item)  # type: ignore[no-any-return]

    return element


def _register(type_name: str, element: type) -> type[_Array]:
    array = type(f"{type_name.title()}Array", (_Array,), {"element": element})
    dumper = type(
        f"{type_name.title()}ArrayDumper",
        (_ArrayDumper,),
        {"element": element, "type_name": type_name},
    )
    psycopg.adapters.register_dumper(array, dumper)
    return array


_ARRAYS: dict[str, type[_Array]] = {
    name: _register(name, element)
    for name, element in (
        ("text", str),
        ("bytea", bytes),
        ("int4", Int4),
        ("int8", Int8),
        ("jsonb", Jsonb),
        ("timestamptz", datetime),
    )
}


# What each array's element dumper takes; None is a null. jsonb takes only `Jsonb`: a
# plain string sent as one would be stored as a JSON string, where psycopg's own list
# sends text that PostgreSQL parses.
_TAKES: dict[str, tuple[type, ...]] = {
    "text": (str,),
    "bytea": (bytes, bytearray, memoryview),
    "int4": (int,),
    "int8": (int,),
    "jsonb": (Jsonb,),
    "timestamptz": (datetime,),
}
# The integers each integer type holds: psycopg's C dumper of int4 keeps the low 32 bits
# of a larger one (2**31 would be stored as -2**31), where PostgreSQL refuses it.
_RANGES: dict[str, range] = {"int4": range(-(2**31), 2**31), "int8": range(-(2**63), 2**63)}


def pg_array(type_name: str, values: Iterable[Any]) -> list[Any]:
    """`values` as a parameter of PostgreSQL type `type_name`[] (text, bytea, int4, int8,
    jsonb or timestamptz), for a `%b` placeholder; a plain list, for psycopg to find its
    dumper as before, for any other type or a value its element dumper does not take
    (a bool is no int4, a naive datetime no timestamptz, an integer past its type's
    range none of it, jsonb takes only `Jsonb`)."""
    array = _ARRAYS.get(type_name)
    items = list(values)
    if array is None:
        return items
    takes, holds = _TAKES[type_name], _RANGES.get(type_name)
    for item in items:
        if item is None:
            continue
        if not isinstance(item, takes) or isinstance(item, bool):
            return items
        if holds is not None and item not in holds:
            return items  # for PostgreSQL to refuse, as it does a plain list's
        if isinstance(item, datetime) and item.tzinfo is None:
            return items
    return array(items)
