"""The PostgreSQL backend's pool reads json and jsonb with `jsontext.loads`.

psycopg reads them with `json.loads` by default, which took about a sixth of the
registry's time for a page of ten threads, on their metadata alone (issue 15).
`jsontext.loads` gives the same values (orjson where the two agree), which the
values below check where they differ: integers past 64 bits, which orjson alone
would read as floats.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg.adapt import Loader
from psycopg.pq import Format

from code_hero.config import create_postgres_checkpointer
from code_hero.persistence import jsontext
from code_hero.persistence.pg_backend import PostgresBackend

pytestmark = pytest.mark.postgres

VALUES: list[Any] = [
    {"graph": "small", "tags": ["a", "é", "\u2603"], "n": 1.5, "none": None},
    {"big": 123456789012345678901234567890, "neg": -(2**70), "small": 2**63 - 1},
    [1, 2.0, True, False, None, "x"],
    "text",
    1e300,
]


@pytest.fixture
async def backend(pg_database: str) -> AsyncIterator[PostgresBackend]:
    backend = PostgresBackend(create_postgres_checkpointer(pg_database))
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


def _loads_of(loader: type[Loader]) -> Any:
    return loader(0, None).loads  # type: ignore[attr-defined]


async def test_json_is_read_by_jsontext(backend: PostgresBackend) -> None:
    async with backend.pool.connection() as conn:
        for name in ("json", "jsonb"):
            for fmt in (Format.TEXT, Format.BINARY):
                loader = conn.adapters.get_loader(conn.adapters.types[name].oid, fmt)
                assert loader is not None
                assert _loads_of(loader) is jsontext.loads


async def test_the_pools_connections_share_one_map_of_loaders(backend: PostgresBackend) -> None:
    # Registered on each connection, the json loaders made each copy psycopg's maps of
    # loaders (~10 KiB a connection, sixteen in a busy pool). psycopg's maps are
    # copy-on-write: connections that started from one map and changed nothing share
    # its dicts, which only its private `_loaders` shows.
    async with backend.pool.connection() as one, backend.pool.connection() as two:
        assert one is not two
        for fmt in (Format.TEXT, Format.BINARY):
            assert one.adapters._loaders[fmt] is two.adapters._loaders[fmt]


@pytest.mark.parametrize("binary", [False, True])
async def test_json_values_read_back_as_json_loads_reads_them(
    backend: PostgresBackend, binary: bool
) -> None:
    async with backend.pool.connection() as conn, conn.cursor(binary=binary) as cur:
        for value in VALUES:
            text = json.dumps(value)
            await cur.execute(
                "SELECT %s::jsonb AS b, %s::json AS j, %s::jsonb::text AS bt",
                [text, text, text],
            )
            row = await cur.fetchone()
            assert row is not None
            # What json.loads makes of the text PostgreSQL sends (jsonb writes 1e300 out
            # in full), to the type: ints stay ints, floats floats.
            assert repr(row["b"]) == repr(json.loads(row["bt"]))
            assert repr(row["j"]) == repr(json.loads(text))
