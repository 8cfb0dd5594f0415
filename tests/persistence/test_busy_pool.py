"""A saturated PostgreSQL pool is busy, not down: what a thread touch does then.

The touch that follows a stored checkpoint (`create=False`, it only moves
`updated_at`) must not fail the write it follows; one that would create the
thread's row answers busy. Nothing fails over either way, nor when the retry of
quarantined entries or the recovery's drain meets the saturated pool."""

from __future__ import annotations

import contextlib
from typing import cast
from urllib.parse import urlsplit

import pytest
from psycopg_pool import PoolTimeout

from code_hero.checkpointing import EnhancedCheckpointerManager, create_postgres_checkpointer
from code_hero.config import CheckpointerConfig
from code_hero.errors import BackendUnavailableError
from code_hero.persistence.backends import PostgresBackend
from code_hero.persistence.entries import TouchThread
from code_hero.persistence.fallback import Outage
from code_hero.persistence.journal import Quarantined
from code_hero.persistence.recovery import retry_quarantined
from code_hero.persistence.slots import BackendSlot
from tests.conftest import PG_ADMIN_URL
from tests.faults import BlackHoleProxy, on_the_primary, with_port


def _proxied() -> BlackHoleProxy:
    """A fault proxy in front of the local PostgreSQL server."""
    return BlackHoleProxy("127.0.0.1", urlsplit(PG_ADMIN_URL).port or 5432)


def _one_connection(pg_database: str, proxy: BlackHoleProxy) -> CheckpointerConfig:
    """The database through `proxy`, on a pool of one connection that times out in half a
    second, and no health probe of its own (an hour apart)."""
    return create_postgres_checkpointer(
        with_port(pg_database, proxy.port),
        pool_min_size=1,
        pool_max_size=1,
        pool_timeout=0.5,
        saver_instances=1,
        health_check_interval=3600,
    )


async def test_a_busy_pool_drops_a_touch_that_only_moves_updated_at(pg_database: str) -> None:
    config = create_postgres_checkpointer(
        pg_database, pool_min_size=1, pool_max_size=1, pool_timeout=0.5, saver_instances=1
    )
    async with EnhancedCheckpointerManager(config) as manager:
        await on_the_primary(manager)  # under load its open may time out first
        router = manager.router
        pool = cast(PostgresBackend, router.primary.backend).pool
        async with contextlib.AsyncExitStack() as held:  # every connection, held by others
            for _ in range(pool.max_size):
                await held.enter_async_context(pool.connection())
            await router.touch("busy-1", None, create=False)  # no error: dropped
            with pytest.raises(BackendUnavailableError, match="busy"):
                await router.touch("busy-2", None, create=True)
        assert router.active_slot is router.primary  # nothing failed over
        await router.touch("busy-2", None, create=True)  # not throttled: it retries
        assert await manager.registry.get_thread("busy-2") is not None


async def test_only_a_pool_with_every_connection_open_counts_as_busy(pg_database: str) -> None:
    """A pool short of connections that times out could not open them (a restarted
    server, psycopg-pool's backoff): that is the database's doing, so the router
    fails over as for any unreachable database instead of answering busy (seen in
    the outage test under load: runs failed "busy" while the server came back)."""
    config = create_postgres_checkpointer(
        pg_database, pool_min_size=1, pool_max_size=3, pool_timeout=0.5, saver_instances=1
    )
    async with EnhancedCheckpointerManager(config) as manager:
        await on_the_primary(manager)  # under load its open may time out first
        router = manager.router
        backend = cast(PostgresBackend, router.primary.backend)
        assert not backend.pool_saturated()
        # Short of connections: down at once, without asking the probe.
        assert await router.outage(router.primary, PoolTimeout("no connection in time")) == "down"
        assert not router._confirming
        async with contextlib.AsyncExitStack() as held:
            for _ in range(backend.pool.max_size):
                # Two of them are opened now: waited for as long as that takes (a new
                # connection outlasted the pool's 0.5 s on a loaded machine, -n 2).
                await held.enter_async_context(backend.pool.connection(timeout=60))
            assert backend.pool_saturated()


@pytest.mark.parametrize("database", ["answers", "silent"])
async def test_a_quarantine_retry_on_a_saturated_pool_fails_over_only_if_the_probe_fails(
    pg_database: str, database: str
) -> None:
    """The retry of quarantined entries failed the primary over on any error that looked
    unreachable, a pool timeout on a saturated pool among them: a busy pool made an
    outage. As the router does for every other call, a probe on a connection of its own
    decides now: busy, nothing fails over and the entry waits for the next retry; a
    database that does not answer the probe (a black hole) fails over still."""
    async with _proxied() as proxy:
        # No probe but the retry's own.
        async with EnhancedCheckpointerManager(_one_connection(pg_database, proxy)) as manager:
            await on_the_primary(manager)  # under load its open may time out first
            router = manager.router
            router.journal.quarantine.append(Quarantined(TouchThread("q-1", None), 1, "refused"))
            pool = cast(PostgresBackend, router.primary.backend).pool
            async with contextlib.AsyncExitStack() as held:  # every connection, held by others
                for _ in range(pool.max_size):
                    await held.enter_async_context(pool.connection())
                if database == "silent":
                    proxy.black_hole()
                await retry_quarantined(router)
                assert router.serving is (database == "answers")
            assert router.quarantined == 1  # kept for the next retry
            proxy.forward()
            if database == "answers":
                await retry_quarantined(router)
                assert not router.quarantined
                assert await manager.registry.get_thread("q-1") is not None


@pytest.mark.parametrize("database", ["answers", "silent"])
async def test_a_recovery_on_a_saturated_pool_gives_up_only_if_the_probe_fails(
    pg_database: str, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recovery's drain took a pool timeout for an unreachable primary: a saturated
    pool stopped the copy-back and marked the primary failed, the fallback serving on
    until the next probe. The drain asks the router's probe now, as the quarantine's
    retry does: busy, it drains again once the pool frees and the primary serves, with
    no failover; a database that does not answer the probe (a black hole) stops it."""
    async with _proxied() as proxy:
        # No probe but the test's and the drain's own.
        async with EnhancedCheckpointerManager(_one_connection(pg_database, proxy)) as manager:
            await on_the_primary(manager)  # under load its open may time out first
            router = manager.router
            backend = cast(PostgresBackend, router.primary.backend)
            router.fail_primary(ConnectionRefusedError("refused"))  # an outage
            await router.touch("o-1", None, create=True)  # to the fallback, journalled
            assert router.active > 0 and len(router.journal.entries) == 1
            switches = router.metrics.fallback_switches
            held = contextlib.AsyncExitStack()
            reconnect, outage, verdicts = backend.reconnect, router.outage, []

            async def reconnect_then_saturate() -> None:
                await reconnect()  # a fresh pool: every connection of it, held by others
                for _ in range(backend.pool.max_size):
                    await held.enter_async_context(backend.pool.connection())
                if database == "silent":
                    proxy.black_hole()

            async def judged(slot: BackendSlot, exc: BaseException) -> Outage | None:
                verdicts.append(verdict := await outage(slot, exc))
                proxy.forward()
                await held.aclose()  # the pool frees
                return verdict

            monkeypatch.setattr(backend, "reconnect", reconnect_then_saturate)
            monkeypatch.setattr(router, "outage", judged)
            assert await router.probe(router.primary)
            recovered = await router.recover()
            assert verdicts == ["busy" if database == "answers" else "down"]
            assert recovered is router.serving is (database == "answers")
            assert router.primary.healthy is (database == "answers")
            assert len(router.journal.entries) == (0 if database == "answers" else 1)
            assert router.metrics.fallback_switches == switches  # no failover more
            if database == "answers":
                assert await backend.registry.get_thread("o-1") is not None
