"""The one-step deletion's function on PostgreSQL (`code_hero_purge_thread`): each way
it ends, as the registry reports it (issue 15: it was a pipeline of two statements)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.errors import Diagnostic
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.registry import PostgresRegistry
from tests.persistence.registry.support import PG_KWARGS, at, events, make_pool, put, run, thread

pytestmark = pytest.mark.postgres


async def _saver_tables(registry: PostgresRegistry, *thread_ids: str) -> None:
    """The savers' three tables (their setup is the savers'), two rows each per thread."""
    async with registry.pool.connection() as conn:
        for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
            await conn.execute(f"CREATE TABLE {table} (thread_id TEXT NOT NULL)")
            for thread_id in thread_ids:
                await conn.execute(f"INSERT INTO {table} VALUES (%s), (%s)", [thread_id, thread_id])


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

    pool = make_pool(pg_database)
    await pool.open()
    try:
        registry = PostgresRegistry(pool)
        await registry.setup()
        await _saver_tables(registry)
        for i in range(100):
            await put(registry, f"t{i}", at(i))
            await registry.put_run(run(f"r{i}", f"t{i}", status="SUCCESS"))
            await registry.store_events(events(f"r{i}", f"t{i}", *range(13)))
    finally:
        await pool.close()
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
