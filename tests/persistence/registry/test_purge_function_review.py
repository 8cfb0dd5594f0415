"""Review of the one-step deletion's function (`code_hero_purge_thread`)."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from code_hero.checkpointing import create_postgres_checkpointer
from code_hero.persistence.fallback_state import PrimaryUnreachableError
from code_hero.persistence.migrations import POSTGRES_MIGRATIONS
from code_hero.persistence.registry import PostgresRegistry
from tests.persistence.registry.support import at, events, make_pool, put, run
from tests.persistence.test_down_means_down import _manager, _writer
from tests.persistence.test_pg_dropped_database import _recreate

pytestmark = pytest.mark.postgres


async def _saver_tables(registry: PostgresRegistry) -> None:
    async with registry.pool.connection() as conn:
        for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
            await conn.execute(f"CREATE TABLE {table} (thread_id TEXT NOT NULL)")


class _Old(PostgresRegistry):
    migrations = POSTGRES_MIGRATIONS[:-1]


async def test_an_old_database_upgraded_gets_the_function(pg_database: str) -> None:
    pool = make_pool(pg_database)
    await pool.open()
    try:
        old = _Old(pool)
        await old.setup()
        await _saver_tables(old)
        await put(old, "t1", at(1))
        await old.put_run(run("r1", "t1", status="SUCCESS"))
        await old.store_events(events("r1", "t1", 1, 2))
        new = PostgresRegistry(pool)
        await new.setup()
        gone = await new.purge_idle_thread("t1", None)
        assert (gone.existed, gone.runs) == (True, 1)
        assert await new.list_events("r1") == []
    finally:
        await pool.close()


async def test_two_schemas_each_their_own_function(pg_database: str) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA a")
        conn.execute('CREATE SCHEMA "B"')
    pools = [
        make_pool(f"{pg_database}?options={quote('-csearch_path=a')}"),
        make_pool(f"{pg_database}?options=" + quote('-c search_path="B"')),
    ]
    regs: list[Any] = []
    try:
        for pool in pools:
            await pool.open()
            reg = PostgresRegistry(pool)
            await reg.setup()
            await _saver_tables(reg)
            regs.append(reg)
            await put(reg, "t1", at(1))
            await reg.put_run(run("r1", "t1", status="SUCCESS"))
        gone = await regs[0].purge_idle_thread("t1", None)
        assert (gone.existed, gone.runs) == (True, 1)
        assert await regs[0].get_thread("t1") is None
        assert await regs[1].get_thread("t1") is not None
        gone = await regs[1].purge_idle_thread("t1", None)
        assert (gone.existed, gone.runs) == (True, 1)
        with psycopg.connect(pg_database) as conn:
            rows = conn.execute(
                "SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE p.proname = 'code_hero_purge_thread' ORDER BY 1"
            ).fetchall()
            assert [r[0] for r in rows] == ["B", "a"]
    finally:
        for pool in pools:
            await pool.close()


async def test_a_deletion_on_a_recreated_database_is_an_outage(pg_database: str) -> None:
    """The database dropped and recreated: the deletion's first statement met no table
    (42P01: an outage, the fallback serves); now it meets no function (42883)."""
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        await _writer(manager)("before")
        _recreate(pg_database)
        # An outage (the fallback's "retry in" answer), never undefined_function (INTERNAL).
        with contextlib.suppress(PrimaryUnreachableError):
            await manager.purge_idle_thread("before")
        assert manager.router.active == 1


async def test_a_run_admitted_while_the_deletion_waits_keeps_the_thread(
    pg_database: str,
) -> None:
    """An admission holding the thread's lock commits a PENDING run while the function
    waits for that lock: its later checks (own snapshots) must see the run."""
    import asyncio

    pool = make_pool(pg_database)
    await pool.open()
    try:
        reg = PostgresRegistry(pool)
        await reg.setup()
        await _saver_tables(reg)
        await put(reg, "t1", at(1))
        await reg.put_run(run("r0", "t1", status="SUCCESS"))
        async with await psycopg.AsyncConnection.connect(pg_database) as admit:
            await admit.execute("SELECT 1 FROM code_hero_threads WHERE thread_id = 't1' FOR UPDATE")
            deletion = asyncio.create_task(reg.purge_idle_thread("t1", None))
            async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as w:
                for _ in range(200):
                    cur = await w.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%code_hero_purge_thread%'"
                    )
                    row = await cur.fetchone()
                    if row and row[0]:
                        break
                    await asyncio.sleep(0.02)
            await admit.execute(
                "INSERT INTO code_hero_runs (run_id, thread_id, graph, status, created_at) "
                "VALUES ('r1', 't1', 'g', 'PENDING', now())"
            )
            await admit.commit()
            gone = await deletion
        assert gone.busy and not gone.existed and gone.runs == 0
        assert await reg.get_thread("t1") is not None
    finally:
        await pool.close()


async def test_lock_timeout_applies_inside_the_function(pg_database: str) -> None:
    pool = make_pool(f"{pg_database}?options=" + quote("-c lock_timeout=300"))
    await pool.open()
    try:
        reg = PostgresRegistry(pool)
        await reg.setup()
        await _saver_tables(reg)
        await put(reg, "t1", at(1))
        await reg.put_run(run("r0", "t1", status="SUCCESS"))
        async with await psycopg.AsyncConnection.connect(pg_database) as other:
            await other.execute("SELECT 1 FROM code_hero_runs WHERE run_id = 'r0' FOR UPDATE")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                await reg.purge_idle_thread("t1", None)
            await other.rollback()
        assert await reg.get_thread("t1") is not None  # rolled back whole
    finally:
        await pool.close()


async def test_a_deadlock_inside_the_function_is_tried_again(pg_database: str) -> None:
    import asyncio

    pool = make_pool(f"{pg_database}?options=" + quote("-c deadlock_timeout=1000"))
    await pool.open()
    try:
        reg = PostgresRegistry(pool)
        await reg.setup()
        await _saver_tables(reg)
        await put(reg, "t1", at(1))
        await reg.put_run(run("r0", "t1", status="SUCCESS"))
        async with await psycopg.AsyncConnection.connect(pg_database) as other:
            await other.execute("SET LOCAL deadlock_timeout = '20s'")
            await other.execute("SELECT 1 FROM code_hero_runs WHERE run_id = 'r0' FOR UPDATE")
            deletion = asyncio.create_task(reg.purge_idle_thread("t1", None))
            await asyncio.sleep(0.3)  # the function holds the thread, waits for the run
            await other.execute("SELECT 1 FROM code_hero_threads WHERE thread_id = 't1' FOR UPDATE")
            await other.commit()
            gone = await deletion
        assert gone.existed and gone.runs == 1
    finally:
        await pool.close()
