"""A checkout in flight when the database is found unreachable fails over at once.

`LendingPool.fail_waiting` ends the waits in psycopg_pool's queue when the router
finds the primary down. A checkout that is not in that queue at that moment, but
between two tries (it met a dead idle connection, the pool's check discarded it,
and psycopg_pool sleeps before the next try), used to go back to the pool after
the outage was found and wait out the whole pool timeout there: a run's
checkpoint write held for seconds at the start of an outage, so its cancel
waited as long or answered RUNNING (found by the audit, 2026-11-30: a
`cancelRun` 4-5 s in an outage, a listing 5 s).

On a PostgreSQL cluster of the test's own, stopped by the test (the shared one is
never stopped).
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from code_hero.config import create_postgres_checkpointer
from code_hero.persistence.pg_backend import PostgresBackend
from tests.faults import until
from tests.replicas.test_durable_fallback import OwnPostgres, own_pg

pytestmark = pytest.mark.postgres

__all__ = ["own_pg"]


async def test_a_checkout_between_tries_when_the_outage_is_found_fails_over(
    own_pg: OwnPostgres,
) -> None:
    backend = PostgresBackend(create_postgres_checkpointer(own_pg.url, pool_timeout=3.0))
    await backend.open()
    pool = backend.pool
    try:
        await until(lambda: _true(pool.get_stats().get("pool_available", 0) >= 1))
        own_pg.stop()  # the idle connections are dead now
        getting = asyncio.create_task(pool.getconn())
        # The check met a dead idle connection: the checkout sleeps before its next try,
        # out of psycopg_pool's queue.
        await until(lambda: _true(pool.get_stats().get("connections_lost", 0) >= 1))
        assert not getting.done()
        backend.abandon_waits()  # the router found the database unreachable
        with pytest.raises(psycopg.OperationalError) as caught:
            await getting
        assert not isinstance(caught.value, PoolTimeout)
        assert "found unreachable" in str(caught.value)
    finally:
        await backend.close()


async def test_a_probe_that_answers_again_lets_checkouts_through(own_pg: OwnPostgres) -> None:
    backend = PostgresBackend(create_postgres_checkpointer(own_pg.url, pool_timeout=3.0))
    await backend.open()
    try:
        own_pg.stop()
        backend.abandon_waits()
        with pytest.raises(psycopg.OperationalError):
            async with backend.pool.connection() as conn:
                await conn.execute("SELECT 1")
        own_pg.start()
        await backend.probe()
        async with backend.pool.connection() as conn:
            assert await (await conn.execute("SELECT 1 AS one")).fetchone() == {"one": 1}
    finally:
        await backend.close()


async def _true(value: bool) -> bool:
    return value
