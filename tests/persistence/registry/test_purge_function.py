"""The one-step deletion's function on PostgreSQL (`code_hero_purge_thread`): each way
it ends, as the registry reports it (issue 15: it was a pipeline of two statements);
how it is made (an old database upgraded, one function a schema), and how it meets a
recreated database, a run admitted while it waits, lock_timeout and a deadlock."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.errors import Diagnostic
from psycopg_pool import AsyncConnectionPool

from code_hero.checkpointing import create_postgres_checkpointer
from code_hero.persistence.fallback_state import PrimaryUnreachableError
from code_hero.persistence.migrations import POSTGRES_MIGRATIONS, PURGE_THREAD
from code_hero.persistence.registry import PostgresRegistry
from tests.persistence.registry.support import PG_KWARGS, at, events, make_pool, put, run, thread
from tests.persistence.test_down_means_down import _manager, _writer
from tests.persistence.test_pg_dropped_database import _recreate

pytestmark = pytest.mark.postgres


async def _saver_tables(registry: PostgresRegistry, *thread_ids: str) -> None:
    """The savers' three tables (their setup is the savers'), two rows each per thread."""
    async with registry.pool.connection() as conn:
        for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
            await conn.execute(f"CREATE TABLE {table} (thread_id TEXT NOT NULL)")
            for thread_id in thread_ids:
                await conn.execute(f"INSERT INTO {table} VALUES (%s), (%s)", [thread_id, thread_id])


@contextlib.asynccontextmanager
async def _registry_at(url: str) -> AsyncIterator[PostgresRegistry]:
    """A registry set up on a pool of its own at `url`, with the savers' tables."""
    pool = make_pool(url)
    await pool.open()
    try:
        registry = PostgresRegistry(pool)
        await registry.setup()
        await _saver_tables(registry)
        yield registry
    finally:
        await pool.close()


async def _left(registry: PostgresRegistry, thread_id: str) -> dict[str, int]:
    counts = {}
    async with registry.pool.connection() as conn:
        for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes", "code_hero_runs"):
            cur = await conn.execute(
                f"SELECT count(*) AS n FROM {table} WHERE thread_id = %s", [thread_id]
            )
            row = await cur.fetchone()
            assert row is not None
            counts[table] = int(row["n"])
    return counts


async def test_a_thread_its_runs_and_checkpoints_go_with_a_tombstone(
    pg_registry: PostgresRegistry,
) -> None:
    await _saver_tables(pg_registry, "t1", "t2")
    made = await put(pg_registry, "t1", at(1), user_id="ada")
    await pg_registry.put_run(run("r1", "t1", status="SUCCESS"))
    await pg_registry.put_run(run("r0", "t1", status="ERROR"))
    await pg_registry.store_events(events("r1", "t1", 1, 2) + events("r0", "t1", 1))

    gone = await pg_registry.purge_idle_thread("t1", at(2), "ada")

    assert (gone.existed, gone.checkpoints, gone.runs) == (True, 2, 2)
    assert not (gone.busy or gone.edited or gone.expired or gone.foreign)
    assert await pg_registry.get_thread("t1") is None
    assert set((await _left(pg_registry, "t1")).values()) == {0}
    assert await pg_registry.list_events("r1") == [] and await pg_registry.list_events("r0") == []
    assert await _left(pg_registry, "t2") == {
        "checkpoints": 2,
        "checkpoint_blobs": 2,
        "checkpoint_writes": 2,
        "code_hero_runs": 0,
    }
    async with pg_registry.pool.connection() as conn:
        cur = await conn.execute("SELECT thread_id, created_at FROM code_hero_deleted_threads")
        assert await cur.fetchall() == [{"thread_id": "t1", "created_at": made.created_at}]


async def test_what_keeps_a_thread_keeps_all_of_it(pg_registry: PostgresRegistry) -> None:
    await _saver_tables(pg_registry, "busy", "mine", "old")
    await put(pg_registry, "busy", at(1))
    await pg_registry.put_run(run("r-busy", "busy", status="RUNNING"))
    await put(pg_registry, "mine", at(1), user_id="ada")
    await pg_registry.put_thread(thread("old", at(1), ttl_seconds=10, expires_at=at(11)))
    await pg_registry.put_run(run("r-old", "old", status="RUNNING"))

    busy = await pg_registry.purge_idle_thread("busy", None)
    foreign = await pg_registry.purge_idle_thread("mine", None, "bob")
    expired = await pg_registry.purge_idle_thread("old", at(20))

    assert (busy.busy, busy.existed, busy.checkpoints) == (True, False, 0)
    # Busy is "deletable once its runs stop": never for another user's or an expired one.
    assert (foreign.foreign, foreign.busy, foreign.existed) == (True, False, False)
    assert (expired.expired, expired.busy, expired.existed) == (True, False, False)
    for thread_id in ("busy", "mine", "old"):
        assert await pg_registry.get_thread(thread_id, expired=True) is not None
        assert (await _left(pg_registry, thread_id))["checkpoints"] == 2


async def test_a_thread_only_the_savers_hold_is_an_administrators_to_delete(
    pg_registry: PostgresRegistry,
) -> None:
    await _saver_tables(pg_registry, "saved")

    refused = await pg_registry.purge_idle_thread("saved", None, "ada")
    assert refused.foreign and refused.checkpoints == 0
    gone = await pg_registry.purge_idle_thread("saved", None)

    assert (gone.existed, gone.checkpoints, gone.runs, gone.foreign) == (False, 2, 0, False)
    assert (await _left(pg_registry, "saved"))["checkpoints"] == 0


async def test_its_runs_and_events_are_read_by_key(pg_database: str) -> None:
    """The function's plans are generic from its first call: made while the tables are
    small and not yet analysed (a new database's first deletions, `bench/delete.py`), a
    delete by `run_id = ANY(...)` scanned every run or every event (the statement before
    the function did too), and went on doing so as they grew. (The savers' tables here
    have no index.)"""
    seen: list[dict[str, Any]] = []

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        for sql in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_format = 'json'",
            "SET auto_explain.log_level = 'notice'",
        ):
            await conn.execute(sql)

        def notice(diag: Diagnostic) -> None:
            text = diag.message_primary or ""
            if "plan:" in text:
                seen.append(json.loads(text[text.index("{") :]))

        conn.add_notice_handler(notice)

    async with _registry_at(pg_database) as registry:
        for i in range(100):
            await put(registry, f"t{i}", at(i))
            await registry.put_run(run(f"r{i}", f"t{i}", status="SUCCESS"))
            await registry.store_events(events(f"r{i}", f"t{i}", *range(13)))
    reporting: AsyncConnectionPool[Any] = AsyncConnectionPool(
        pg_database, kwargs=PG_KWARGS, configure=configure, min_size=1, max_size=1, open=False
    )
    await reporting.open()
    try:
        gone = await PostgresRegistry(reporting).purge_idle_thread("t7", None)
    finally:
        await reporting.close()

    assert gone.existed and gone.runs == 1
    scanned = {
        node["Relation Name"]
        for plan in seen
        for node in _nodes(plan["Plan"])
        if node["Node Type"] == "Seq Scan"
    }
    assert not scanned & {"code_hero_runs", "code_hero_run_events"}


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


class _Old(PostgresRegistry):
    """A database from before the function (and the migrations after it)."""

    migrations = POSTGRES_MIGRATIONS[: POSTGRES_MIGRATIONS.index(PURGE_THREAD)]


async def test_an_old_database_upgraded_gets_the_function(pg_database: str) -> None:
    pool = make_pool(pg_database)
    await pool.open()
    try:
        old = _Old(pool)
        await old.setup()
        await _saver_tables(old)
        await put(old, "t1", at(1))
        async with pool.connection() as conn:  # the run as that version wrote it
            await conn.execute(
                "INSERT INTO code_hero_runs (run_id, thread_id, graph, status, created_at) "
                "VALUES ('r1', 't1', 'g', 'SUCCESS', now())"
            )
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
    async with _registry_at(pg_database) as reg:
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


async def test_lock_timeout_applies_inside_the_function(pg_database: str) -> None:
    async with _registry_at(f"{pg_database}?options=" + quote("-c lock_timeout=300")) as reg:
        await put(reg, "t1", at(1))
        await reg.put_run(run("r0", "t1", status="SUCCESS"))
        async with await psycopg.AsyncConnection.connect(pg_database) as other:
            await other.execute("SELECT 1 FROM code_hero_runs WHERE run_id = 'r0' FOR UPDATE")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                await reg.purge_idle_thread("t1", None)
            await other.rollback()
        assert await reg.get_thread("t1") is not None  # rolled back whole


async def test_a_deadlock_inside_the_function_is_tried_again(pg_database: str) -> None:
    async with _registry_at(f"{pg_database}?options=" + quote("-c deadlock_timeout=1000")) as reg:
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
