"""The JSON text the sqlite_registry stores keeps one spelling across releases."""

from __future__ import annotations

from code_hero.persistence.records import ThreadFilter
from code_hero.persistence.registry import SqliteRegistry
from tests.persistence.registry.support import put


async def test_an_array_filter_matches_rows_stored_by_earlier_releases(
    sqlite_registry: SqliteRegistry,
) -> None:
    # SQLite compares an array leaf of a metadata filter as JSON text, escapes as
    # written: a filter value spelled in UTF-8 (orjson) missed every row json.dumps
    # had stored with `\u` escapes, and the other way round.
    await put(sqlite_registry, "new", metadata={"tags": ["é", 1e16]})
    await sqlite_registry.conn.execute(  # as stored before (json.dumps' own spelling)
        "INSERT INTO code_hero_threads (thread_id, status, metadata, created_at, updated_at) "
        "VALUES ('old', 'IDLE', ?, '2026-01-01', '2026-01-01')",
        ['{"tags":["\\u00e9",1e+16]}'],
    )
    await sqlite_registry.conn.commit()
    page = await sqlite_registry.list_threads(
        ThreadFilter(metadata={"tags": ["é", 1e16]}), first=10
    )
    assert sorted(t.thread_id for t in page.items) == ["new", "old"]
