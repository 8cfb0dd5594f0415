"""Writers of many runs lock them in run_id order on PostgreSQL.

An event batch locks its runs in run_id order; a lease renewal that locked them
in scan order waited in a cycle with it (DeadlockDetected after 1 s, found in
review): both now take the same order."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg

from code_hero.persistence.registry import PostgresRegistry
from tests.persistence.registry.support import events, make_pool, run


async def test_an_event_batch_and_a_lease_renewal_do_not_deadlock(pg_database: str) -> None:
    pool = make_pool(pg_database)
    await pool.open()
    try:
        reg = PostgresRegistry(pool)
        await reg.setup()
        # Physical order r2, r1 (different threads: one run per thread is claimable).
        await reg.admit_run(run("r2", thread_id="t2"), reject_if_busy=False)
        await reg.admit_run(run("r1", thread_id="t1"), reject_if_busy=False)
        now = datetime.now(UTC)
        claimed = await reg.claim_runs("me", now=now, until=now + timedelta(minutes=1), limit=10)
        assert {r.run_id for r in claimed} == {"r1", "r2"}
        # A third party holds r2 for a moment (any single-run update: finish_run, cancel).
        async with await psycopg.AsyncConnection.connect(pg_database) as t0:
            await t0.execute("UPDATE code_hero_runs SET error = 'x' WHERE run_id = 'r2'")
            renew = asyncio.create_task(
                reg.renew_leases("me", ["r1", "r2"], now + timedelta(minutes=2))
            )
            await asyncio.sleep(0.3)
            batch = asyncio.create_task(
                reg.store_batch(
                    events("r1", "t1", 1) + events("r2", "t2", 1),
                    {"r1": {"error": "y"}, "r2": {"error": "y"}},
                )
            )
            await asyncio.sleep(0.3)
            await t0.commit()
        results = await asyncio.gather(renew, batch, return_exceptions=True)
        assert not any(isinstance(r, BaseException) for r in results), results
    finally:
        await pool.close()


async def test_an_event_batch_locks_its_runs_in_order_before_it_writes(pg_database: str) -> None:
    """A batch with events of r1 and r2 that updates r2 alone waits for r1 holding
    nothing: the one statement's UPDATE (and the events' key checks after it) must wait
    on the lock of its runs in run order, or it takes r2 before r1, against the order a
    deletion or a lease renewal takes them."""
    pool = make_pool(pg_database)
    await pool.open()
    try:
        reg = PostgresRegistry(pool)
        await reg.setup()
        await reg.admit_run(run("r1", thread_id="t1"), reject_if_busy=False)
        await reg.admit_run(run("r2", thread_id="t2"), reject_if_busy=False)
        async with (
            await psycopg.AsyncConnection.connect(pg_database) as holder,
            await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as probe,
        ):
            await holder.execute("SELECT 1 FROM code_hero_runs WHERE run_id = 'r1' FOR UPDATE")
            batch = asyncio.create_task(
                reg.store_batch(
                    events("r1", "t1", 1) + events("r2", "t2", 1), {"r2": {"error": "y"}}
                )
            )
            for _ in range(2000):  # until the batch waits for a row lock (r1's)
                cur = await probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
                row = await cur.fetchone()
                if row is not None and row[0]:
                    break
                assert not batch.done(), batch
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the batch never waited for r1")
            # r2 is free while the batch waits for r1.
            await probe.execute("BEGIN")
            await probe.execute(
                "SELECT 1 FROM code_hero_runs WHERE run_id = 'r2' FOR UPDATE NOWAIT"
            )
            await probe.execute("ROLLBACK")
            await holder.commit()
            await batch
        stored = await reg.get_run("r2")
        assert stored is not None and stored.error == "y"
    finally:
        await pool.close()
