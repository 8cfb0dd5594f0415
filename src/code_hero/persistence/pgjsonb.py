"""jsonb parameters dumped ahead of their statement, held once in the form psycopg sends.

Group commit serialises a checkpoint's jsonb when it serialises its write, off the event
loop for a big group (`bulk.statements`), and keeps it until the write has committed.
Held as JSON text in a `Jsonb`, it was copied again at the write: psycopg's binary jsonb
dumper sends `b"\\x01" + text`, and the jsonb[] array joined those copies, so a group of
big inline texts took ~1.5x the memory of psycopg dumping `Jsonb(value)` at the write
(tracemalloc, 12 x 1 MB: 35 against 23 MB). A `DumpedJsonb` holds the binary form itself:
its dumpers send it as it is (binary) or a view of it past the version byte (text), and
`pg_array`'s jsonb[] takes it unchanged as an element.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import postgres
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.json import Jsonb

from code_hero.persistence.jsonbfloats import jsonb_dumps

__all__ = ["DumpedJsonb", "dumped_jsonb"]

# jsonb's binary format: this version byte, then the JSON text.
_VERSION = b"\x01"
_VERSION_TEXT = "\x01"


class DumpedJsonb(Jsonb):
    """A jsonb parameter whose `obj` is already what psycopg sends for it in binary:
    the version byte, then the JSON text (`dumped_jsonb` makes one)."""

    __slots__ = ()


def dumped_jsonb(value: Any) -> DumpedJsonb:
    """`value` as a jsonb parameter already dumped: the bytes `Jsonb(value)` would send on
    the pool's connections (`pg_backend._json_adapters`), so NULs, lone surrogates,
    non-ASCII text and integral floats fare as with the stock saver."""
    # The function the pool's jsonb dumper calls (`jsonb_dumps`: psycopg's, `json.dumps`
    # or what set_json_dumps set for all connections, read at each call as a dumper reads
    # it when made; each integral float kept a float), called here: looking a dumper up
    # and making one per value cost about a third as much as a small checkpoint's dumps.
    text = jsonb_dumps(value)
    if isinstance(text, str):
        # The version byte joined to the str, then encoded: the dumped text and one
        # copy of it alive at once, not the text, its bytes and their prefixed copy.
        return DumpedJsonb((_VERSION_TEXT + text).encode())
    return DumpedJsonb(_VERSION + text)


class _DumpedJsonbBinaryDumper(Dumper):
    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> Buffer:
        return obj.obj  # type: ignore[no-any-return]


class _DumpedJsonbDumper(Dumper):
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> Buffer:
        # Text past the version byte, not copied. A text parameter's end is found by
        # its NUL: JSON text has none of its own (json.dumps escapes it), and a view
        # to the end of bytes ends where bytes end in one.
        return memoryview(obj.obj)[1:]


# Binary, then text: psycopg's order for Jsonb, so `%s` picks text for both (the stock
# saver's statements say `%s`).
psycopg.adapters.register_dumper(DumpedJsonb, _DumpedJsonbBinaryDumper)
psycopg.adapters.register_dumper(DumpedJsonb, _DumpedJsonbDumper)
