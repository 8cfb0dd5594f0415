"""Setting the registry up: idempotent, concurrent, beside the savers, migrating old data."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from code_hero.errors import NotFoundError
from code_hero.persistence.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from code_hero.persistence.records import Registry, RunFilter
from code_hero.persistence.registry import PostgresRegistry, SqliteRegistry
from tests.persistence.registry.support import events, make_pool, put, run, thread


async def test_setup_is_idempotent_and_keeps_data(registry: Registry) -> None:
    await put(registry, "t1", metadata={"a": 1})
    await registry.setup()
    await registry.setup()
    stored = await registry.get_thread("t1")
    assert stored is not None and stored.metadata == {"a": 1}


async def test_concurrent_setup_on_postgres(pg_database: str) -> None:
    pool = make_pool(pg_database)
    await pool.open()
    try:
        await asyncio.gather(*(PostgresRegistry(pool).setup() for _ in range(3)))
        reg = PostgresRegistry(pool)
        await reg.touch_threads({"t1": None})
        assert await reg.thread_ids() == ["t1"]
    finally:
        await pool.close()


async def test_concurrent_setup_on_two_sqlite_connections(tmp_path: Path) -> None:
    path = str(tmp_path / "two.sqlite")
    async with aiosqlite.connect(path) as one, aiosqlite.connect(path) as two:
        regs = [SqliteRegistry(one, asyncio.Lock()), SqliteRegistry(two, asyncio.Lock())]
        await asyncio.gather(*(r.setup() for r in regs))
        await regs[0].touch_threads({"t1": None})
        assert await regs[1].thread_ids() == ["t1"]


async def test_lives_beside_the_checkpoint_saver(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Saver and registry share a database (and on SQLite a connection and its lock)."""
    config: Any = {"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}

    async def exercise(saver: Any, reg: Registry) -> None:
        await asyncio.gather(saver.setup(), reg.setup())
        await asyncio.gather(
            saver.aput(config, empty_checkpoint(), {}, {}),
            *(reg.touch_threads({f"t{i}": "u"}) for i in range(20)),
            *(reg.put_thread(thread(f"t{i}", metadata={"i": i})) for i in range(20)),
        )
        assert await saver.aget_tuple(config) is not None
        assert len(await reg.thread_ids()) == 20

    async with aiosqlite.connect(str(tmp_path / "cp.sqlite")) as conn:
        saver = AsyncSqliteSaver(conn)
        await exercise(saver, SqliteRegistry(conn, saver.lock))
    pool = make_pool(request.getfixturevalue("pg_database"))
    await pool.open()
    try:
        await exercise(AsyncPostgresSaver(pool), PostgresRegistry(pool))
    finally:
        await pool.close()


class _SqliteRegistryV10(SqliteRegistry):
    """The registry as the previous release had it (migrations up to v10)."""

    migrations = SQLITE_MIGRATIONS[:11]


class _PgRegistryV10(PostgresRegistry):
    migrations = POSTGRES_MIGRATIONS[:11]


async def _v10_thread(old: SqliteRegistry | PostgresRegistry, thread_id: str) -> None:
    """A thread row in v10's columns (today's ThreadRecord has columns v10 lacks)."""
    now = old._ts(datetime.now(UTC))
    async with old._session() as s:
        await s.execute(
            "INSERT INTO code_hero_threads (thread_id, status, created_at, updated_at) "
            "VALUES (?, 'IDLE', ?, ?)",
            [thread_id, now, now],
        )


async def _v10_run(old: SqliteRegistry | PostgresRegistry, run_id: str, thread_id: str) -> None:
    """A run row in v10's columns (today's RunRecord has columns v10 lacks)."""
    async with old._session() as s:
        await s.execute(
            "INSERT INTO code_hero_runs (run_id, thread_id, graph, status, created_at) "
            "VALUES (?, ?, 'g', 'PENDING', ?)",
            [run_id, thread_id, old._ts(datetime.now(UTC))],
        )


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_migration_to_foreign_keys_removes_orphans(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A database of the previous schema version with rows left without their thread
    or run: the migration removes those, keeps the rest, and the keys hold after."""

    async def fill(old: SqliteRegistry | PostgresRegistry) -> None:
        await old.setup()
        await _v10_thread(old, "kept")
        await _v10_run(old, "r-kept", "kept")
        await old.store_events(events("r-kept", "kept", 1, 2))
        await _v10_run(old, "r-orphan", "deleted-thread")  # no thread row
        await old.store_events(events("r-orphan", "deleted-thread", 1))
        await old.store_events(events("r-gone", "kept", 1))  # no run row

    async def check(new: Registry) -> None:
        await new.setup()
        assert await new.get_run("r-kept") is not None
        assert [e.seq for e in await new.list_events("r-kept")] == [1, 2]
        assert await new.get_run("r-orphan") is None
        assert await new.list_events("r-orphan") == [] and await new.list_events("r-gone") == []
        # After the migration, the keys hold: the run index still serves paging.
        page = await new.list_runs(RunFilter(thread_id="kept"), first=10)
        assert [r.run_id for r in page.items] == ["r-kept"]
        with pytest.raises(NotFoundError):
            await new.put_run(run("r-new", "deleted-thread"))
        await new.store_events(events("r-gone", "kept", 2))
        assert await new.list_events("r-gone") == []
        assert await new.delete_thread("kept") == (True, 1)
        assert await new.list_events("r-kept") == []

    if kind == "postgres":
        pool = make_pool(request.getfixturevalue("pg_database"))
        await pool.open()
        try:
            await fill(_PgRegistryV10(pool))
            await check(PostgresRegistry(pool))
        finally:
            await pool.close()
        return
    path = str(tmp_path / "old.sqlite")
    async with aiosqlite.connect(path) as conn:
        await fill(_SqliteRegistryV10(conn, asyncio.Lock()))
    async with aiosqlite.connect(path) as conn:
        await conn.execute("PRAGMA foreign_keys = ON")
        await check(SqliteRegistry(conn, asyncio.Lock()))
