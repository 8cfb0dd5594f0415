"""Every listing of threads the registry builds (each filter, order, direction, cursor)
reads on PostgreSQL, through the production pool's adapters and in a session time zone
with a DST change and a half-hour offset, the records a read of each thread alone gives,
and finds the same threads in the same order as SQLite does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.pg_backend import _json_adapters
from code_hero.persistence.records import (
    Registry,
    SortDirection,
    ThreadFilter,
    ThreadOrder,
    ThreadRecord,
    ThreadSortField,
    ThreadStatus,
)
from code_hero.persistence.registry import PostgresRegistry, SqliteRegistry
from tests.persistence.registry.support import thread

STATUSES = list(ThreadStatus)
# No float with an exponent: jsonb writes those out as integers (a known difference).
METADATA: list[dict[str, Any]] = [
    {},
    {"team": "a", "big": 2**70, "f": 1.5},
    {"team": "b", "s": 'é 🙂 "q" \\ \u2028', "nested": {"a": [1, {}, [], None, True]}},
    {"team": "a", "n": None, "id": "12345678901234567890123"},
    {"tags": ["x", "y"], "team": "c", "neg": -(2**65)},
    {"": "", "team": "b"},
]
# Across America/St_Johns' change from -02:30 to -03:30 (2025-11-02 at 04:30 UTC).
BASE = datetime(2025, 11, 2, 3, 0, 0, 123456, tzinfo=UTC)

FILTERS: list[ThreadFilter] = [
    ThreadFilter(),
    ThreadFilter(user_id="u1"),
    ThreadFilter(status=ThreadStatus.BUSY),
    ThreadFilter(statuses=[ThreadStatus.IDLE, ThreadStatus.ERROR]),
    ThreadFilter(metadata={"team": "a"}),
    ThreadFilter(metadata_has_keys=["team", "big"]),
    ThreadFilter(ids=["t03", "t07", "t11", "t29"]),
    ThreadFilter(
        created_after=BASE + timedelta(minutes=50), created_before=BASE + timedelta(hours=2)
    ),
    ThreadFilter(updated_after=BASE + timedelta(minutes=70)),
    ThreadFilter(any_of=[ThreadFilter(user_id="u0"), ThreadFilter(metadata={"team": "b"})]),
    ThreadFilter(not_=ThreadFilter(user_id="u2")),
    ThreadFilter(user_id="u1", not_=ThreadFilter(metadata_has_keys=["tags"])),
]
ORDERS = [ThreadOrder(field, direction) for field in ThreadSortField for direction in SortDirection]


@asynccontextmanager
async def _pg(url: str) -> AsyncIterator[PostgresRegistry]:
    # As PostgresBackend's pool: every json and jsonb value read by `jsontext.loads`.
    kwargs = {
        "autocommit": True,
        "prepare_threshold": 0,
        "row_factory": dict_row,
        "context": _json_adapters(),
    }
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(url, kwargs=kwargs, open=False)
    await pool.open()
    try:
        reg = PostgresRegistry(pool)
        await reg.setup()
        yield reg
    finally:
        await pool.close()


async def _fill(registry: Registry) -> None:
    for i in range(30):
        created = BASE + timedelta(minutes=5 * i)
        # Some threads share an update time, so the thread id breaks the tie.
        updated = BASE + timedelta(minutes=7 * (i // 2), microseconds=i % 3)
        extra: dict[str, Any] = {}
        if i % 4 == 1:
            extra = {"ttl_seconds": 10**8, "deletion_token": None, "edit_until": updated}
        await registry.put_thread(
            ThreadRecord(
                thread_id=f"t{i:02}",
                user_id=None if i % 5 == 4 else f"u{i % 3}",
                status=STATUSES[i % len(STATUSES)],
                metadata=METADATA[i % len(METADATA)],
                created_at=created,
                updated_at=updated,
                **extra,
            )
        )


async def _all_pages(
    registry: Registry, flt: ThreadFilter, order: ThreadOrder, first: int
) -> list[ThreadRecord]:
    found: list[ThreadRecord] = []
    after = None
    while True:
        page = await registry.list_threads(flt, first=first, after=after, order=order)
        found.extend(page.items)
        if not page.has_next_page:
            return found
        after = page.end_cursor


def _same(a: ThreadRecord, b: ThreadRecord, *, key_order: bool = True) -> None:
    for f in fields(ThreadRecord):
        left, right = getattr(a, f.name), getattr(b, f.name)
        assert left == right and type(left) is type(right), (a.thread_id, f.name)
        if isinstance(left, datetime):
            assert left.tzinfo is UTC, (a.thread_id, f.name)
    # Types inside the metadata too; jsonb keeps its keys in an order of its own.
    assert repr(a.metadata) == repr(b.metadata) or not key_order, a.thread_id
    assert repr(sorted(a.metadata.items())) == repr(sorted(b.metadata.items())), a.thread_id


@pytest.mark.parametrize("first", [1, 4, 50])
async def test_every_listing_reads_as_single_reads_and_as_sqlite(
    pg_database: str, tmp_path: Path, first: int
) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET TimeZone = 'America/St_Johns'").format(
                psycopg.sql.Identifier(conn.info.dbname)
            )
        )
    async with _pg(pg_database) as pg:
        async with aiosqlite.connect(tmp_path / "reg.sqlite") as conn:
            sqlite = SqliteRegistry(conn, asyncio.Lock())
            await sqlite.setup()
            await _fill(pg)
            await _fill(sqlite)
            alone = await pg.get_threads([f"t{i:02}" for i in range(30)])
            assert len(alone) == 30
            for flt in FILTERS:
                for order in ORDERS:
                    listed = await _all_pages(pg, flt, order, first)
                    lite = await _all_pages(sqlite, flt, order, first)
                    assert listed, (flt, order)
                    assert [t.thread_id for t in listed] == [t.thread_id for t in lite], (
                        flt,
                        order,
                    )
                    for record, other in zip(listed, lite, strict=True):
                        _same(record, alone[record.thread_id])
                        _same(record, other, key_order=False)


async def test_a_page_in_another_client_encoding_reads_metadata_as_a_single_read(
    pg_database: str,
) -> None:
    # psycopg's jsonb adapters send and read JSON as UTF-8 whatever the session's
    # client_encoding; a text column is decoded in that encoding. A page's metadata
    # read as text must still be the metadata a single read gives.
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET client_encoding = 'LATIN1'").format(
                psycopg.sql.Identifier(conn.info.dbname)
            )
        )
    async with _pg(pg_database) as pg:
        async with pg.pool.connection() as conn:
            assert conn.info.encoding == "iso8859-1"
        metadata = {"s": "é", "n": 1}
        await pg.put_thread(thread("t1", metadata=metadata))
        alone = await pg.get_thread("t1")
        assert alone is not None and alone.metadata == metadata
        page = await pg.list_threads(ThreadFilter(), first=10)
        assert [t.metadata for t in page.items] == [metadata]
