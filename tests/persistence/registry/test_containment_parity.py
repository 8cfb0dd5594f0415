"""A metadata filter finds the same rows on SQLite as PostgreSQL's `@>` does.

Random documents and filters drawn from them (seeded: the same each run): arrays
in any order, objects within arrays, arrays within arrays, duplicates, null,
booleans against 1, 1 against 1.0, texts that look like JSON, keys holding `"`,
non-ASCII or control characters.
"""

from __future__ import annotations

import json
import random
import sqlite3
from typing import Any

import psycopg
import pytest

from code_hero.persistence.registry.sqlite import _sqlite_contains

pytestmark = pytest.mark.postgres

SCALARS = [None, True, False, 0, 1, 1.0, -0.0, 2, 2.5, "a", "b", "1", "true", '["a"]', ""]
# Keys a JSON path label cannot spell: '"', and what json.dumps stores escaped (a
# non-ASCII or control character: SQLite matched no key stored "\u65e5\u672c" to "日本").
KEYS = ["tags", "k", 'q"', "a.b", "n", "日本", "k\tt", "🔑"]


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 2 or roll < 0.55:
        return rng.choice(SCALARS)
    if roll < 0.8:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _part(rng: random.Random, value: Any) -> Any:
    """Most often something `value` contains; sometimes not."""
    if isinstance(value, list):
        items = [_part(rng, x) for x in rng.sample(value, rng.randint(0, len(value)))]
        return items + ([_value(rng, 2)] if rng.random() < 0.3 else [])
    if isinstance(value, dict):
        return {k: _part(rng, x) for k, x in value.items() if rng.random() < 0.7}
    return value if rng.random() < 0.8 else rng.choice(SCALARS)


def test_sqlite_metadata_filters_match_postgres_containment(pg_database: str) -> None:
    rng = random.Random(15)
    docs = [{k: _value(rng) for k in rng.sample(KEYS, rng.randint(1, 4))} for _ in range(200)]
    filters = []
    for _ in range(600):
        doc = rng.choice(docs)
        flt = {k: _part(rng, v) for k, v in doc.items() if rng.random() < 0.7}
        filters.append({k: v for k, v in flt.items() if v != {}} or {"tags": [rng.choice(SCALARS)]})
    # Pairs a random draw seldom makes: one element of each kind the items' lookup must
    # tell apart from a number (true, "1"), next to a number it must not (1.0).
    docs += [{"tags": [True, 2]}, {"tags": ["1", 2]}, {"tags": [1.0, 2]}, {"tags": [2, 1, 1]}]
    filters += [{"tags": [1, 2]}, {"tags": ["1", 2]}, {"tags": [True, 2]}, {"tags": [1, 1.0]}]
    lite = sqlite3.connect(":memory:")
    lite.execute("CREATE TABLE t (id INTEGER, metadata TEXT)")
    lite.executemany(
        "INSERT INTO t VALUES (?, ?)", [(i, json.dumps(d)) for i, d in enumerate(docs)]
    )
    with psycopg.connect(pg_database) as pg:
        pg.execute("CREATE TABLE t (id INT, metadata JSONB)")
        with pg.cursor() as cur:
            cur.executemany(
                "INSERT INTO t VALUES (%s, %s)", [(i, json.dumps(d)) for i, d in enumerate(docs)]
            )
        differ = []
        for flt in filters:
            cond, params = _sqlite_contains("metadata", flt)
            found = {row[0] for row in lite.execute(f"SELECT id FROM t WHERE {cond}", params)}
            sql = "SELECT id FROM t WHERE metadata @> %s::jsonb"
            expected = {row[0] for row in pg.execute(sql, (json.dumps(flt),))}
            if found != expected:
                differ.append(flt)
        # Items SQLite reads as one number (past 64 bits, a JSON integer is a float
        # there): counted as SQLite tells them apart, not as Python does.
        pg.execute(
            "INSERT INTO t VALUES (1000, %s), (1001, %s)",
            ('{"tags": [1e23]}', '{"tags": [1e23, 100000000000000000000000]}'),
        )
        lite.execute("INSERT INTO t VALUES (1000, '{\"tags\": [1e23]}')")
        lite.execute("INSERT INTO t VALUES (1001, '{\"tags\": [1e23, 100000000000000000000000]}')")
        flt = {"tags": [10**23, 1e23]}
        cond, params = _sqlite_contains("metadata", flt)
        found = {row[0] for row in lite.execute(f"SELECT id FROM t WHERE {cond}", params)}
        expected = {
            row[0]
            for row in pg.execute(
                "SELECT id FROM t WHERE metadata @> %s::jsonb", (json.dumps(flt),)
            )
        }
        assert found == expected == {1000, 1001}
    assert differ == [], differ[:3]
    assert sum(1 for flt in filters if any(isinstance(v, list) for v in flt.values())) > 100
