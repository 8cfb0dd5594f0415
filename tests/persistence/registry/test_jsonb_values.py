"""The JSON the PostgreSQL registry sends for a jsonb value: orjson's where it writes
what json writes, else json's (issue 15); PostgreSQL stores the same value either way,
but for an integral float from 1e16 up, which it now keeps a float where json's text
made it an int (equal in Python: `jsonbfloats`, tests/persistence/test_jsonbfloats.py)."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from typing import Any

import orjson
import psycopg
import pytest

from code_hero.persistence.registry.postgres import _jsonb, _jsonb_text
from code_hero.persistence.unreachable import UnstorableJSON


class Mode(StrEnum):
    FAST = "fast"


DEEP: list[Any] = [1]
for _ in range(300):
    DEEP = [DEEP]

VALUES: list[Any] = [
    {"node": "n1", "update": {"steps": ["n1"], "text": 'é \u2028 "q" \\'}, "seq": 3},
    [1.5, 1e16, 1e-07, -0.0, 10**18, True, None, [], {}],
    {"n": [math.nan, math.inf, -math.inf, 2.5]},  # null for each, as before
    {"big": 2**70, "neg": -(2**65)},  # past 64 bits: json's
    {1: "int key", None: "null key", 2.5: "float key"},  # keys not str: json's
    {"mode": Mode.FAST, "tuple": (1, "a")},  # a str subclass: json's
    {"deep": DEEP},  # past orjson's 254 levels: json's
]


@pytest.mark.parametrize("value", VALUES)
async def test_postgresql_stores_what_json_would_have_sent(pg_database: str, value: Any) -> None:
    def finite(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    before = json.dumps(finite(value), allow_nan=False)  # what was sent before
    async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as conn:
        cur = await conn.execute("SELECT %s::jsonb, %s::jsonb", [_jsonb(value), before])
        now, was = await cur.fetchone() or (None, None)
    assert now == was


def test_plain_json_is_written_by_orjson() -> None:
    value = {"node": "n1", "update": {"steps": ["n1"]}, "seq": 3, "x": [1.5, None, True]}
    assert _jsonb_text(value) == orjson.dumps(value)


def test_what_neither_writes_is_unstorable() -> None:
    with pytest.raises(UnstorableJSON):
        _jsonb_text({"n": 10**5000})
    with pytest.raises(TypeError):  # not JSON at all: json's own error, as before
        _jsonb_text({"x": object()})
