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
