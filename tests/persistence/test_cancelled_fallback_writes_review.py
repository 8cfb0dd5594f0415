"""Review of the audit merge (`_to_its_end`, `LendingPool.unreachable`).

1. A registry write of an outage (a thread created on the fallback) cancelled while the
   fallback stores it: `_to_its_end` guards the router's checkpoint writes only; the
   registry's degraded writes store on the fallback then journal, so a cancel between
   the two leaves the thread in the fallback, never copied back.
2. The database flaps: a probe answers (the pool's `unreachable` cleared), the copy-back
   has not switched yet, the database goes again. The failing probe finds the primary
   not active, `fail` returns before `abandon_waits`, so checkouts wait out the pool
   timeout again for the rest of the outage.
3. So after the copy-back's `reconnect`: its fresh pool was never marked, the primary
   not serving yet when the database went again.

On a PostgreSQL cluster of the test's own, stopped by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from code_hero.config import create_postgres_checkpointer
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.records import ThreadRecord, ThreadStatus
from code_hero.persistence.registry.dialect import utc_now
from tests.replicas.test_durable_fallback import OwnPostgres, own_pg

pytestmark = pytest.mark.postgres

__all__ = ["own_pg"]

STEPS = 60


async def _degrade(manager: EnhancedCheckpointerManager) -> None:
    while manager.overall_status == "healthy":
        await manager.probe_health()
        await asyncio.sleep(0.1)


async def test_a_thread_created_in_an_outage_and_cancelled_while_stored_reaches_the_database(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    config = create_postgres_checkpointer(
        own_pg.url, fallback_path=str(tmp_path / "fb.sqlite"), health_check_interval=0.2
    )
    async with EnhancedCheckpointerManager(config) as manager:
        registry = manager.registry
        fallback = manager.router.slots[1]
        own_pg.stop()
        await _degrade(manager)
        stored: list[str] = []
        for n in range(STEPS):
            now = utc_now()
            thread = ThreadRecord(f"created-{n}", None, ThreadStatus.IDLE, {}, now, now)
            made = asyncio.ensure_future(registry.create_thread(thread, new_thread=True))
            for _ in range(n):
                await asyncio.sleep(0)
            made.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await made
            assert fallback.backend is not None
            if await fallback.backend.registry.get_thread(thread.thread_id) is not None:
                stored.append(thread.thread_id)
        assert stored
        own_pg.start()
        while manager.overall_status != "healthy" or manager.pending_sync:
            await manager.probe_health()
            await asyncio.sleep(0.1)
    there = {row[0] for row in own_pg.rows("SELECT thread_id FROM code_hero_threads")}
    lost = [t for t in stored if t not in there]
    assert not lost, f"{len(lost)} of {len(stored)} stored on the fallback: {lost}"


async def test_a_checkout_after_the_database_went_again_fails_over_at_once(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    config = create_postgres_checkpointer(
        own_pg.url,
        fallback_path=str(tmp_path / "fb.sqlite"),
        health_check_interval=60.0,
        pool_timeout=3.0,
    )
    async with EnhancedCheckpointerManager(config) as manager:
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
        with pytest.raises(psycopg.OperationalError) as caught:
            conn = await pool.getconn()
            await pool.putconn(conn)
        assert not isinstance(caught.value, PoolTimeout), "waited out the pool timeout"


async def test_a_checkout_on_the_pool_the_copy_back_opened_fails_over_at_once(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    # The copy-back's first step opens a fresh pool (`reconnect`), with the primary not
    # serving yet: the database going then must mark that pool, not the one it replaced.
    config = create_postgres_checkpointer(
        own_pg.url,
        fallback_path=str(tmp_path / "fb.sqlite"),
        health_check_interval=60.0,
        pool_timeout=3.0,
    )
    async with EnhancedCheckpointerManager(config) as manager:
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
        with pytest.raises(psycopg.OperationalError) as caught:
            conn = await pool.getconn()
            await pool.putconn(conn)
        assert not isinstance(caught.value, PoolTimeout), "waited out the pool timeout"
