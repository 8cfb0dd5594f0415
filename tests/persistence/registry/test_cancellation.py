"""Registry calls cancelled mid-statement leave the connection clean."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.records import Registry, ThreadRecord, ThreadStatus
from code_hero.persistence.registry import PostgresRegistry, SqliteRegistry
from tests.faults import cancelled_at_every_step
from tests.persistence.registry.support import PG_KWARGS, run


async def test_a_cancelled_call_leaves_no_transaction_behind(registry: Registry) -> None:
    # A cancelled coroutine does not stop the statement it sent (aiosqlite runs it on
    # its own thread). The next session used to start while that statement was still
    # pending and meet the transaction it opened: "cannot start a transaction within
    # a transaction".
    now = datetime.now(UTC)
    for round_ in range(40):
        cancelled = asyncio.create_task(registry.touch_threads({f"gone{round_}": None}))
        for _ in range(round_ % 8):
            await asyncio.sleep(0)
        cancelled.cancel()
        thread = ThreadRecord(f"t{round_}", None, ThreadStatus.IDLE, {}, now, now)
        following = asyncio.create_task(registry.touch_threads({thread.thread_id: "u"}))
        results = await asyncio.gather(cancelled, following, return_exceptions=True)
        assert not isinstance(results[1], BaseException), results[1]
        assert await registry.get_thread(thread.thread_id) is not None


@pytest.mark.postgres
async def test_a_deletion_cancelled_mid_pipeline_leaves_its_connection_sound(
    pg_database: str,
) -> None:
    """PostgreSQL's one-step deletion is one pipeline (the lock, then the statement):
    cancelled at any step of it (a client gone, a shutdown), its connection must not go
    back to the pool in pipeline mode with results unread, where the next borrower's
    statements read no rows (seen for checkpoint writes by tests/persistence/test_chaos.py;
    the deletion's rollback path already leaves it sound: a guard)."""
    pool = AsyncConnectionPool(pg_database, kwargs=PG_KWARGS, min_size=1, max_size=1, open=False)
    await pool.open()
    try:
        await AsyncPostgresSaver(pool).setup()  # the deletion's checkpoint tables
        registry = PostgresRegistry(pool)
        await registry.setup()

        async def deletion(n: int) -> object:
            return await registry.purge_idle_thread(f"t{n}", None)

        broken = await cancelled_at_every_step(pool, deletion, 60)
        assert broken == []
    finally:
        await pool.close()


async def test_a_claim_cancelled_in_flight_leaves_no_lease(sqlite_registry: SqliteRegistry) -> None:
    # The claim loop is cancelled at shutdown, maybe with a claim in flight: the claim
    # must roll back, not commit leases the closing server never hands back (a claim's
    # statement once took its commit with it in one trip; review).
    await sqlite_registry.admit_run(run("r1", "t1"), reject_if_busy=False)
    gate = threading.Event()
    blocker = asyncio.ensure_future(sqlite_registry.conn._execute(gate.wait))
    now = datetime.now(UTC)
    task = asyncio.create_task(
        sqlite_registry.claim_runs("me", now=now, until=now + timedelta(hours=1), limit=5)
    )
    for _ in range(20):  # the claim takes the lock and sends its trip behind the blocker
        await asyncio.sleep(0)
    task.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await blocker
    got = await sqlite_registry.get_run("r1")
    assert got is not None
    assert got.lease_owner is None
