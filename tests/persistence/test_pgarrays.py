"""pg_array: lists sent as typed binary arrays, found by their class (issue 15)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.array import ListBinaryDumper
from psycopg.types.json import Jsonb

from code_hero.persistence.pgarrays import pg_array

AT = datetime(2026, 11, 29, 23, 5, 1, 123456, tzinfo=UTC)
COLUMNS: list[tuple[str, list[Any], list[Any]]] = [
    ("text", ["a", None, "ünï", ""], ["a", None, "ünï", ""]),
    ("bytea", [b"\x00\xff", None, b""], [b"\x00\xff", None, b""]),
    ("int4", [-4, 0, None, 2**31 - 1], [-4, 0, None, 2**31 - 1]),
    ("int8", [1, None, 2**40], [1, None, 2**40]),
    ("jsonb", [Jsonb({"k": [1, "x"]}), None, Jsonb(None)], [{"k": [1, "x"]}, None, None]),
    ("timestamptz", [AT, None, AT + timedelta(days=400)], [AT, None, AT + timedelta(days=400)]),
    ("text", [], []),
]


async def test_each_type_reads_back_as_sent(pg_database: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_database) as conn:
        for type_name, sent, read in COLUMNS:
            cur = await conn.execute(f"SELECT %b::{type_name}[] AS a", [pg_array(type_name, sent)])
            row = await cur.fetchone()
            assert row is not None
            got = [bytes(v) if isinstance(v, memoryview) else v for v in row[0]]
            assert got == read, type_name


async def test_psycopg_walks_no_typed_list(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typed list's dumper is found by its class: psycopg's list dumper, which walks
    the list for its element type at every statement, is never asked."""
    walked: list[object] = []
    get_key = ListBinaryDumper.get_key

    def counting(self: ListBinaryDumper, obj: list[Any], format: Any) -> Any:
        walked.append(obj)
        return get_key(self, obj, format)

    monkeypatch.setattr(ListBinaryDumper, "get_key", counting)
    async with await psycopg.AsyncConnection.connect(pg_database) as conn:
        params = [pg_array(type_name, sent) for type_name, sent, _ in COLUMNS]
        placeholders = ", ".join(f"%b::{type_name}[]" for type_name, _, _ in COLUMNS)
        await conn.execute(f"SELECT {placeholders}", params)
        assert walked == []
        await conn.execute("SELECT %b::text[]", [["plain"]])
        assert walked == [["plain"]]  # (and a plain list is walked, as before)


@pytest.mark.parametrize(
    ("type_name", "values"),
    [
        ("text", [1, None, 2]),
        ("int4", [True, False]),
        ("timestamptz", [datetime(2026, 1, 1)]),  # naive
        ("numeric", [1]),
    ],
)
async def test_a_value_its_dumper_does_not_take_goes_as_a_plain_list(
    pg_database: str, type_name: str, values: list[Any]
) -> None:
    array = pg_array(type_name, values)
    assert type(array) is list and array == values
    async with await psycopg.AsyncConnection.connect(pg_database) as conn:
        await conn.execute("SET TIME ZONE 'UTC'")
        cur = await conn.execute(f"SELECT cardinality(%b::{type_name}[])", [array])
        assert await cur.fetchone() == (len(values),)


@pytest.mark.parametrize(
    ("type_name", "value"),
    [("int4", 2**31), ("int4", 2**32 + 5), ("int4", -(2**31) - 1), ("int8", 2**63)],
)
async def test_an_int_past_its_type_is_refused_not_wrapped(
    pg_database: str, type_name: str, value: int
) -> None:
    """As with a plain list: PostgreSQL refuses the value (a DataError), where psycopg's
    C int4 dumper took its low 32 bits (2**31 read back as -2**31, 2**32 + 5 as 5)."""
    async with await psycopg.AsyncConnection.connect(pg_database) as conn:
        with pytest.raises(psycopg.DataError):
            await conn.execute(f"SELECT %b::{type_name}[]", [pg_array(type_name, [1, value])])


async def test_a_jsonb_text_is_parsed_as_with_a_plain_list(pg_database: str) -> None:
    """Only `Jsonb` values go typed: a plain string is JSON text for PostgreSQL to parse,
    where the jsonb element dumper would have stored it as a JSON string."""
    array = pg_array("jsonb", ['{"a": 1}'])
    assert type(array) is list
    async with await psycopg.AsyncConnection.connect(pg_database) as conn:
        cur = await conn.execute("SELECT (%b::jsonb[])[1]", [array])
        assert await cur.fetchone() == ({"a": 1},)
