"""Integral floats written so PostgreSQL's jsonb gives them back as floats.

jsonb stores `1e+23` (how json and orjson write the float 1e23) as the numeric
100000000000000000000000 with no scale, which reads back as the int 10**23. Every
writer of jsonb on the pool writes such a float positionally with `.0` instead: the
registry's `_jsonb`, the checkpoints dumped ahead of their write (`dumped_jsonb`, group
commit and the recovery) and the stock saver's own `Jsonb` (the pool's dumper).
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict, UserList, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import orjson
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from psycopg.types.json import Jsonb

from code_hero.config import create_postgres_checkpointer
from code_hero.persistence.jsonbfloats import dumps_keeping_floats, jsonb_dumps
from code_hero.persistence.pg_backend import PostgresBackend
from code_hero.persistence.pgjsonb import dumped_jsonb
from code_hero.persistence.registry.postgres import _jsonb, _jsonb_text

FLOATS: dict[str, Any] = {
    "a": 1e23,
    "b": [1e16, 1.5e16, -1e17, 123456789012345678.0, 1e300, 1.7976931348623157e308],
    "c": [1e-07, 5e-324, 0.5, 1e15, 7, 2**63 - 1, -(2**63), True, None],
    "d": 'text, 1e+5 and "2e+7" stay text',
    "1e+5": {"e": -1e22},
}


def _typed(value: Any) -> Any:
    """`value` with each scalar paired with its type's name: 1e23 is no longer 10**23."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


def _as_jsonb(text: str | bytes) -> Any:
    """`text` read as PostgreSQL's jsonb gives it back: a number written with an exponent
    (`1e+23`) is a numeric of no scale, an int; with `.0`, a float."""
    return json.loads(text, parse_float=lambda t: int(Decimal(t)) if "e+" in t else float(t))


def test_integral_floats_are_written_positionally_and_strings_are_left_alone() -> None:
    value = [1e23, -1.5e16, 1e-07, "1e+23", {"k": 1e16}]
    assert dumps_keeping_floats(value, json.dumps) == (
        '[100000000000000000000000.0, -15000000000000000.0, 1e-07, "1e+23", '
        '{"k": 10000000000000000.0}]'
    )
    other = {"a": [1.2345678901234568e17], "s": "a, 1e+5"}
    assert dumps_keeping_floats(other, orjson.dumps) == (
        b'{"a":[123456789012345680.0],"s":"a, 1e+5"}'
    )
    for dumps in (json.dumps, orjson.dumps):
        assert _typed(_as_jsonb(dumps_keeping_floats(FLOATS, dumps))) == _typed(FLOATS)


def test_text_without_such_a_float_is_the_text_dumped() -> None:
    # The fast path: one search, no walk, no second dump.
    for value in ({"a": 1.5, "b": [1e-07, 10]}, {"s": "C++, a+b"}, "e+5"):
        for dumps in (json.dumps, orjson.dumps):
            assert dumps_keeping_floats(value, dumps) == dumps(value)
    # Digits around an `e+` in a string or a key send it to the walk, which finds no float
    # and gives the text as it was: no string is ever rewritten.
    value = {"s": "ab3e+4f, 1e+5", "1e+5": ["[1e+5]", " 1e+1" * 1000, 2**70]}
    for dumps in (json.dumps, orjson.dumps, jsonb_dumps):
        try:
            expected = dumps(value)
        except TypeError:  # orjson and an int past 64 bits
            continue
        assert dumps_keeping_floats(value, dumps) == expected


def test_a_value_with_such_a_float_is_copied_not_changed() -> None:
    value = {"a": [1, {"b": 1e20}], "c": ("x", 1e30), "d": {"e": 1}}
    before = json.dumps(value)
    text = dumps_keeping_floats(value, json.dumps)
    assert json.dumps(value) == before  # the caller's value is untouched
    assert _typed(json.loads(text)) == _typed(
        {"a": [1, {"b": 1e20}], "c": ["x", 1e30], "d": {"e": 1}}
    )


class _Float(float):
    pass


def test_subclasses_of_a_float_a_mapping_or_a_list_are_kept_floats_too() -> None:
    # numpy.float64 is a float's subclass, which LangGraph keeps inline in a checkpoint.
    value = {
        "f": _Float(1e23),
        "o": OrderedDict(x=1e23),
        "d": defaultdict(list, x=[1e17]),
        "l": UserList([1e16]).data,
    }
    for dumps in (json.dumps, orjson.dumps, jsonb_dumps, _jsonb_text):
        try:
            text = dumps_keeping_floats(value, dumps)
        except TypeError:  # orjson refuses a float's subclass
            continue
        written = text if isinstance(text, str) else text.decode()
        assert "e+" not in written, written  # jsonb would read each such number an int
        assert _typed(json.loads(text)) == _typed(
            {"f": 1e23, "o": {"x": 1e23}, "d": {"x": [1e17]}, "l": [1e16]}
        ), dumps


def test_random_values_come_back_as_they_were() -> None:
    # Strings made of what the search looks for (quotes, escapes, `e+`, digits, commas,
    # NULs), next to floats big and small: each text reads back as its value, types and all.
    rng = random.Random(7)
    parts = ['"', "\\", "e+", "1", "9", ",", " ", ":", "[", "-", ".", "x", "\n", "\x00"]
    for _ in range(2000):
        values: list[Any] = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.4:
                values.append("".join(rng.choice(parts) for _ in range(rng.randint(0, 12))))
            elif kind < 0.7:
                values.append(rng.choice([1, -1]) * 10.0 ** rng.randint(-30, 300))
            else:
                values.append(rng.uniform(-1e20, 1e20))
        value = {"v": values, values[0] if isinstance(values[0], str) else "k": values[-1]}
        for dumps in (json.dumps, orjson.dumps):
            text = dumps_keeping_floats(value, dumps)
            assert _typed(_as_jsonb(text)) == _typed(value), text


@asynccontextmanager
async def _opened(url: str, *, group_commit: bool = True) -> AsyncIterator[PostgresBackend]:
    backend = PostgresBackend(create_postgres_checkpointer(url, group_commit=group_commit))
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.mark.postgres
async def test_every_writer_of_jsonb_gives_floats_back(pg_database: str) -> None:
    writers = {"registry": _jsonb(FLOATS), "dumped": dumped_jsonb(FLOATS), "pool": Jsonb(FLOATS)}
    async with _opened(pg_database) as backend, backend.pool.connection() as conn:
        for mark in ("%s", "%t", "%b"):  # psycopg's choice, its text dumper, its binary one
            for name, param in writers.items():
                cur = await conn.execute(
                    f"SELECT {mark}::jsonb AS v, {mark}::jsonb->>'a' AS a", [param, param]
                )
                row = await cur.fetchone()
                assert row is not None
                assert row["a"] == "100000000000000000000000.0", (mark, name)
                assert _typed(row["v"]) == _typed(FLOATS), (mark, name)


@pytest.mark.postgres
@pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "stock-saver"])
async def test_a_checkpoints_inline_float_and_metadata_come_back_floats(
    pg_database: str, group_commit: bool
) -> None:
    """Through the saver (group commit's dumped jsonb, or the stock saver's `Jsonb`): a
    channel's float is kept inline in the checkpoint's jsonb, as is the metadata."""
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"value": 1e23, "small": 1e17}
    checkpoint["channel_versions"] = {"value": 1, "small": 1}
    config: Any = {"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}
    metadata: Any = {"source": "input", "step": -1, "x": 1e23}
    async with _opened(pg_database, group_commit=group_commit) as backend:
        saved = await backend.saver.aput(config, checkpoint, metadata, {"value": 1, "small": 1})
        got = await backend.saver.aget_tuple(saved)
        async with backend.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT checkpoint->'channel_values'->>'value' AS v, metadata->>'x' AS x "
                "FROM checkpoints"
            )
            stored = await cur.fetchone()
    assert got is not None
    assert _typed(got.checkpoint["channel_values"]) == _typed({"value": 1e23, "small": 1e17})
    assert _typed(got.metadata["x"]) == _typed(1e23)
    assert stored == {"v": "100000000000000000000000.0", "x": "100000000000000000000000.0"}
