"""A run's end on PostgreSQL, in one trip (no webhook) or two: what it locks, and
what a cancel, a server-side cancel or the lock bound leaves (nothing committed).

An end whose socket an outage shuts while it waits for the thread's lock is not
here: the server may still commit it once the lock is free (the trip's Sync is
sent with it), as the two-trip end's COMMIT trip could; the journalled end's
replay is then a no-op (`if_unfinished`), its events ON CONFLICT."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from code_hero.persistence.records import RunStatus, ThreadStatus
from code_hero.persistence.registry import PostgresRegistry
from tests.faults import until
from tests.persistence.registry.support import run

NOWAIT = "SELECT 1 FROM code_hero_threads WHERE thread_id = 't1' FOR UPDATE NOWAIT"
RUN_LOCK = "SELECT 1 FROM code_hero_runs WHERE run_id = 'r1' FOR UPDATE"
THREAD_LOCK = "SELECT 1 FROM code_hero_threads WHERE thread_id = 't1' FOR UPDATE"


async def _lock_waiters(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    cur = await conn.execute(
        "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    return [r[0] for r in await cur.fetchall()]


@asynccontextmanager
async def _end_waiting(
    registry: PostgresRegistry, url: str, lock: str
) -> AsyncIterator[tuple[asyncio.Future[Any], psycopg.AsyncConnection[Any], Any]]:
    """Run r1's end while a session of its own (`x`, yielded second) holds `lock`:
    yielded once the end waits for it, with a third, autocommit session to look on."""
    async with (
        await psycopg.AsyncConnection.connect(url) as x,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as y,
    ):
        await x.execute(lock)
        ending = asyncio.ensure_future(
            registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
        )

        async def waits() -> bool:
            return bool(await _lock_waiters(y))

        await until(waits)
        yield ending, x, y


async def test_the_threads_lock_is_held_while_the_ends_statement_waits(
    pg_registry: PostgresRegistry, pg_database: str
) -> None:
    await pg_registry.admit_run(run("r1"), reject_if_busy=False)
    async with _end_waiting(pg_registry, pg_database, RUN_LOCK) as (ending, x, y):
        with pytest.raises(psycopg.errors.LockNotAvailable):
            await y.execute(NOWAIT)
        await x.rollback()
        ended, waiting = await ending
    assert ended is not None and ended.status is RunStatus.SUCCESS and not waiting


@pytest.mark.parametrize("old", [False, True])
async def test_an_end_cancelled_while_it_waits_for_the_thread_commits_nothing(
    pg_registry: PostgresRegistry, pg_database: str, old: bool
) -> None:
    """Cancelled while waiting for the thread's lock: does the end commit anyway?"""
    if old:
        pg_registry._hooks_seen = time.monotonic()  # the two-trip path
    await pg_registry.admit_run(run("r1"), reject_if_busy=False)
    async with _end_waiting(pg_registry, pg_database, THREAD_LOCK) as (ending, x, y):
        ending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ending
        await x.rollback()

        async def settled() -> bool:
            return not await _lock_waiters(y)

        await until(settled)
        await asyncio.sleep(0.5)
    got = await pg_registry.get_run("r1")
    assert got is not None
    assert got.status is RunStatus.PENDING, "a cancelled end committed"


async def test_an_end_the_server_cancels_mid_statement_commits_nothing(
    pg_registry: PostgresRegistry, pg_database: str
) -> None:
    await pg_registry.admit_run(run("r1"), reject_if_busy=False)
    async with _end_waiting(pg_registry, pg_database, RUN_LOCK) as (ending, x, y):
        await y.execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        with pytest.raises(psycopg.errors.QueryCanceled):
            await ending
        await y.execute(NOWAIT)
        await x.rollback()
    got = await pg_registry.get_run("r1")
    assert got is not None and got.status is RunStatus.PENDING
    async with pg_registry.pool.connection() as c:
        assert c.info.transaction_status == 0  # idle


@pytest.mark.parametrize("old", [False, True])
async def test_an_end_that_meets_the_lock_bound_on_the_thread_stores_nothing(
    pg_database: str, old: bool
) -> None:
    """The bound on lock waits (pg_backend's lock_timeout) met on the thread's lock:
    the end raises LockNotAvailable (`contention`'s "busy"), and stores nothing."""
    from psycopg_pool import AsyncConnectionPool

    from tests.persistence.registry.support import PG_KWARGS

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        pg_database,
        kwargs={**PG_KWARGS, "options": "-c lock_timeout=300"},
        min_size=1,
        max_size=2,
        open=False,
    )
    await pool.open()
    try:
        registry = PostgresRegistry(pool)
        await registry.setup()
        if old:
            registry._hooks_seen = time.monotonic()
        await registry.admit_run(run("r1"), reject_if_busy=False)
        async with await psycopg.AsyncConnection.connect(pg_database) as x:
            await x.execute(THREAD_LOCK)
            with pytest.raises(psycopg.errors.LockNotAvailable):
                await registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
            await x.rollback()
        got = await registry.get_run("r1")
        assert got is not None and got.status is RunStatus.PENDING
    finally:
        await pool.close()
