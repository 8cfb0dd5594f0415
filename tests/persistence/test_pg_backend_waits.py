"""A checkout in flight when the database is found unreachable fails over at once.

`LendingPool.fail_waiting` ends the waits in psycopg_pool's queue when the router
finds the primary down. A checkout that is not in that queue at that moment, but
between two tries (it met a dead idle connection, the pool's check discarded it,
and psycopg_pool sleeps before the next try), used to go back to the pool after
the outage was found and wait out the whole pool timeout there: a run's
checkpoint write held for seconds at the start of an outage, so its cancel
waited as long or answered RUNNING (found by the audit, 2026-11-30: a
`cancelRun` 4-5 s in an outage, a listing 5 s).

The mark goes on whichever pool the primary would serve from, serving or not: a
database that flaps (a probe answered, the copy-back not switched yet, the database
gone again) fails checkouts at once again, on the old pool and on the fresh one the
copy-back opened (`reconnect`); and the copy-back's switch waits for a probe that
answers, so the primary never serves from a pool marked unreachable.

On a PostgreSQL cluster of the test's own, stopped by the test (the shared one is
never stopped).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from code_hero.config import create_postgres_checkpointer
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.pg_backend import PostgresBackend
from tests.faults import until
from tests.replicas.test_durable_fallback import OwnPostgres, own_cluster, own_pg

pytestmark = pytest.mark.postgres

__all__ = ["own_cluster", "own_pg"]  # the fixtures, used by name below


def _manager(pg: OwnPostgres, tmp_path: Path, pool_timeout: float) -> EnhancedCheckpointerManager:
    """A manager on `pg` with its fallback file in `tmp_path`, probed when a test says."""
    config = create_postgres_checkpointer(
        pg.url,
        fallback_path=str(tmp_path / "fb.sqlite"),
        health_check_interval=60.0,
        pool_timeout=pool_timeout,
    )
    return EnhancedCheckpointerManager(config)


async def _fails_at_once(pool: Any) -> None:
    """A checkout from `pool` fails without waiting out the pool's timeout."""
    with pytest.raises(psycopg.OperationalError) as caught:
        conn = await pool.getconn()
        await pool.putconn(conn)
    assert not isinstance(caught.value, PoolTimeout), "waited out the pool timeout"


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


async def test_a_checkout_after_the_database_went_again_fails_over_at_once(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    async with _manager(own_pg, tmp_path, pool_timeout=3.0) as manager:
        router = manager.router
        primary = router.primary
        assert primary.backend is not None
        own_pg.stop()
        assert not await router.probe(primary)  # found down while it served
        pool = primary.backend.pool  # type: ignore[attr-defined]
        assert pool.unreachable is not None
        own_pg.start()
        assert await router.probe(primary)  # answers: the copy-back would follow
        own_pg.stop()  # ... but the database goes again first
        assert not await router.probe(primary)
        await _fails_at_once(pool)


async def test_a_checkout_on_the_pool_the_copy_back_opened_fails_over_at_once(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    # The copy-back's first step opens a fresh pool (`reconnect`), with the primary not
    # serving yet: the database going then must mark that pool, not the one it replaced.
    async with _manager(own_pg, tmp_path, pool_timeout=3.0) as manager:
        router = manager.router
        primary = router.primary
        backend = primary.backend
        assert backend is not None
        own_pg.stop()
        assert not await router.probe(primary)
        own_pg.start()
        assert await router.probe(primary)
        await backend.reconnect()  # as `sync_back` does first
        pool = backend.pool  # type: ignore[attr-defined]
        assert router.active_slot is not primary
        own_pg.stop()
        assert not await router.probe(primary)
        await _fails_at_once(pool)


async def test_a_probe_failing_before_the_switch_back_leaves_no_mark_on_the_pool_that_serves(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    async with _manager(own_pg, tmp_path, pool_timeout=10.0) as manager:
        router = manager.router
        primary = router.primary
        backend = primary.backend
        assert backend is not None
        own_pg.stop()
        assert not await router.probe(primary)
        assert router.active_slot is not primary
        own_pg.start()
        assert await router.probe(primary)
        old = backend.pool  # type: ignore[attr-defined]
        async with router.gate.write():  # a write in flight: the switch waits for it
            recovering = asyncio.ensure_future(router.recover())

            async def reconnected() -> bool:  # the copy-back's fresh pool is open
                return backend.pool is not old  # type: ignore[attr-defined,no-any-return]

            await until(reconnected)
            own_pg.stop()  # the database flaps before the switch
            assert not await router.probe(primary)
            own_pg.start()
        # The switch waits for a probe: the pool the primary would serve from was
        # found unreachable since the reconnect (before: switched, and failed over
        # again at the first call, with the database answering).
        assert not await recovering
        assert router.active_slot is not primary
        assert await router.probe(primary)
        assert await router.recover()
        assert router.active_slot is primary
        # The database answers: a call goes to it, and the primary keeps serving.
        assert await manager.registry.get_thread("absent") is None
        assert router.active_slot is primary, f"failed over again: {primary.last_error}"


async def _true(value: bool) -> bool:
    return value
