"""A page of threads reads each thread as a read of that thread alone does.

On PostgreSQL a page's rows are tuples made records by position, metadata read from its
text (`PostgresRegistry._threads_of`), where a single read goes through dict rows and
`Dialect._thread`: both must give the same records, every field and type.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from code_hero.persistence.records import (
    Registry,
    SortDirection,
    ThreadFilter,
    ThreadOrder,
    ThreadRecord,
    ThreadSortField,
)
from code_hero.persistence.registry import PostgresRegistry
from tests.persistence.registry.conftest import _postgres
from tests.persistence.registry.support import thread

# Values a page's metadata text must carry as a row's jsonb does: integers past 64 bits (orjson
# would read them as floats), floats, escapes, non-ASCII text, nesting, empty ones.
METADATA: list[dict[str, Any]] = [
    {},
    {"big": 2**70, "neg": -(2**65) - 1, "f": 1.5, "e": 1e16, "i": 7},
    {"s": 'é 🙂 "quoted" \\ back\nline\t', "nested": {"a": [1, {}, [], None, True]}},
    {"empty": {}},
]


def _same(a: ThreadRecord, b: ThreadRecord) -> None:
    assert set(vars(a)) == {f.name for f in fields(ThreadRecord)}
    for f in fields(ThreadRecord):
        left, right = getattr(a, f.name), getattr(b, f.name)
        assert left == right and type(left) is type(right), f.name
        if isinstance(left, datetime):
            assert left.utcoffset() == timedelta(0), f.name
    # Types inside the metadata too (an int past 64 bits read as a float compares equal).
    assert repr(a.metadata) == repr(b.metadata)


async def _stored(registry: Registry) -> list[ThreadRecord]:
    now = datetime.now(UTC).replace(microsecond=123456)
    for i, metadata in enumerate(METADATA):
        when = now - timedelta(seconds=i)
        extra: dict[str, Any] = {}
        if i == 1:  # every optional field set (a live row: its ttl is not 0)
            extra = {"ttl_seconds": 3600, "deletion_token": "tok", "edit_until": now}
        await registry.put_thread(
            thread(f"t{i}", when, user_id=f"u{i}", metadata=metadata, **extra)
        )
    found = await registry.get_threads([f"t{i}" for i in range(len(METADATA))])
    return [found[f"t{i}"] for i in range(len(METADATA))]


async def test_a_page_reads_every_field_as_a_read_of_one_thread(registry: Registry) -> None:
    alone = await _stored(registry)
    page = await registry.list_threads(ThreadFilter(), first=10)
    assert [t.thread_id for t in page.items] == [t.thread_id for t in alone]
    for listed, read in zip(page.items, alone, strict=True):
        _same(listed, read)
    assert page.items[1].metadata["big"] == 2**70 and page.items[1].edit_until is not None

    # Each order's page in its order, paged.
    oldest = ThreadOrder(ThreadSortField.CREATED_AT, SortDirection.ASC)
    first = await registry.list_threads(ThreadFilter(), first=2, order=oldest)
    rest = await registry.list_threads(
        ThreadFilter(), first=10, after=first.end_cursor, order=oldest
    )
    assert first.has_next_page and not rest.has_next_page
    assert [t.thread_id for t in [*first.items, *rest.items]] == ["t3", "t2", "t1", "t0"]


async def test_an_empty_page(registry: Registry) -> None:
    page = await registry.list_threads(ThreadFilter(), first=10)
    assert page.items == [] and page.end_cursor is None and not page.has_next_page


async def test_a_page_in_another_session_time_zone_is_read_in_utc(pg_database: str) -> None:
    # A page's timestamps come at the session's offset (its TimeZone setting).
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET TimeZone = 'Asia/Kathmandu'").format(
                psycopg.sql.Identifier(conn.info.dbname)
            )
        )
    async with _postgres(pg_database) as registry:
        assert isinstance(registry, PostgresRegistry)
        async with registry.pool.connection() as conn:
            assert (await (await conn.execute("SHOW TimeZone")).fetchone())["TimeZone"] == (
                "Asia/Kathmandu"
            )
        alone = await _stored(registry)
        page = await registry.list_threads(ThreadFilter(), first=10)
        for listed, read in zip(page.items, alone, strict=True):
            _same(listed, read)
