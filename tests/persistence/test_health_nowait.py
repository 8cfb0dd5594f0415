"""Health never waits on a sick database: reports come from the last probe, probes are bounded.

A "sick" database here accepts TCP connections and never answers (a hung
server, or a proxy that turns into a black hole after start-up): psycopg waits
forever on such a server unless something bounds the wait. Our team rule is no
timed assertions, so each test bounds the wait instead (`asyncio.wait_for`,
`eventually`) at a small multiple of the configured timeouts: far below the
10 s psycopg spends on a cancelled query and below "forever".
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import pytest

from code_hero.checkpointing import EnhancedCheckpointerManager, create_postgres_checkpointer
from code_hero.persistence.backends import PostgresBackend
from code_hero.persistence.slots import open_timeout, probe_timeout
from tests.conftest import PG_ADMIN_URL
from tests.faults import BlackHoleProxy, HungServer, with_port
from tests.graphql.clients import eventually

POOL_TIMEOUT = 1.0
INTERVAL = 0.1
TIMED_OUT = re.compile(r"timed out|timeout expired")  # ours, or psycopg's on connect


@pytest.fixture
async def hung() -> AsyncIterator[HungServer]:
    async with HungServer() as server:
        yield server


def _primary(manager: EnhancedCheckpointerManager) -> dict[str, Any]:
    primary: dict[str, Any] = manager.health_report()["primary_checkpointer"]
    return primary


async def test_a_hung_primary_is_reported_at_once_and_probed_again(hung: HungServer) -> None:
    config = create_postgres_checkpointer(
        with_port(PG_ADMIN_URL, hung.port),
        pool_timeout=POOL_TIMEOUT,
        health_check_interval=INTERVAL,
    )
    manager = EnhancedCheckpointerManager(config)
    # Start-up opens the primary within its bound, then serves from the fallback.
    assert await asyncio.wait_for(manager.initialize(), open_timeout(config) + 2) is False
    try:
        report = manager.health_report()
        assert report["overall_status"] == "degraded"
        assert report["active_backend"] == "fallback"
        assert "degraded_since" in report and report["quarantined"] == 0
        primary = report["primary_checkpointer"]
        assert not primary["healthy"] and not primary["active"]
        assert TIMED_OUT.search(primary["last_error"]), primary["last_error"]
        first = primary["checked_at"]
        assert first is not None

        # The loop is trying to open the primary on the hung server again: the
        # report does not wait for that attempt.
        accepted = hung.accepted
        await eventually(lambda: hung.accepted > accepted, open_timeout(config) + 2)
        assert manager.health_report()["overall_status"] == "degraded"

        # The loop keeps going: its attempt ends within the bound, recorded.
        await eventually(lambda: _primary(manager)["checked_at"] != first, open_timeout(config) + 2)
        assert TIMED_OUT.search(_primary(manager)["last_error"])
        assert manager.health_status["primary_healthy"] is False
    finally:
        await manager.cleanup()


async def test_health_check_probes_now_within_its_bound(hung: HungServer) -> None:
    # A long interval: only this test's own calls probe.
    config = create_postgres_checkpointer(
        with_port(PG_ADMIN_URL, hung.port), pool_timeout=POOL_TIMEOUT, health_check_interval=60
    )
    manager = EnhancedCheckpointerManager(config)
    assert await manager.initialize() is False
    try:
        before = _primary(manager)["checked_at"]
        probing = asyncio.create_task(manager.health_check())
        accepted = hung.accepted
        await eventually(lambda: hung.accepted > accepted, 5)  # connecting now
        assert manager.health_report()["overall_status"] == "degraded"
        assert not probing.done()
        report = await asyncio.wait_for(probing, open_timeout(config) + 2)
        assert report["overall_status"] == "degraded"
        assert report["primary_checkpointer"]["checked_at"] != before
        assert TIMED_OUT.search(report["primary_checkpointer"]["last_error"])
    finally:
        await manager.cleanup()


@pytest.mark.postgres
async def test_concurrent_probes_open_the_primary_once(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[PostgresBackend] = []
    real_open = PostgresBackend.open

    async def counting_open(self: PostgresBackend) -> None:
        opened.append(self)
        await real_open(self)

    monkeypatch.setattr(PostgresBackend, "open", counting_open)
    async with BlackHoleProxy("127.0.0.1", urlparse(pg_database).port or 5432) as proxy:
        proxy.refuse()  # down at start-up: the primary never opens
        config = create_postgres_checkpointer(
            with_port(pg_database, proxy.port),
            pool_timeout=POOL_TIMEOUT,
            health_check_interval=60,  # only this test's calls open the primary
            pool_min_size=1,
            pool_max_size=2,
            saver_instances=1,
        )
        manager = EnhancedCheckpointerManager(config)
        assert await manager.initialize() is False
        try:
            assert len(opened) == 1 and manager.router.primary.backend is None
            proxy.forward()
            # Two callers and a retried initialize() at once: one of them opens.
            first, second, serves = await asyncio.wait_for(
                asyncio.gather(
                    manager.health_check(), manager.health_check(), manager.initialize()
                ),
                open_timeout(config) + 2,
            )
            assert len(opened) == 2, "a second backend (and pool) was opened"
            assert manager.router.primary.backend is opened[1]
            assert first["primary_checkpointer"]["healthy"]
            assert second["primary_checkpointer"]["healthy"]
            assert serves is True
            assert (await manager.health_check())["overall_status"] == "healthy"
            assert len(opened) == 2
        finally:
            await manager.cleanup()


@pytest.mark.postgres
async def test_a_primary_that_hangs_after_start_is_marked_down_within_the_bound(
    pg_database: str,
) -> None:
    async with BlackHoleProxy("127.0.0.1", urlparse(pg_database).port or 5432) as proxy:
        config = create_postgres_checkpointer(
            with_port(pg_database, proxy.port),
            pool_timeout=POOL_TIMEOUT,
            health_check_interval=INTERVAL,
            pool_min_size=1,
            pool_max_size=2,
            saver_instances=1,
        )
        manager = EnhancedCheckpointerManager(config)
        assert await manager.initialize() is True
        try:
            assert manager.health_report()["overall_status"] == "healthy"
            healthy_at = _primary(manager)["checked_at"]
            await eventually(lambda: _primary(manager)["checked_at"] != healthy_at, 5)

            proxy.black_hole()
            # Still answers at once, from what the last probe saw.
            assert manager.health_report()["overall_status"] == "healthy"
            # The next probe gives up after pool_timeout; the bound leaves room for
            # one interval and a slow machine, and stays below the ~10 s psycopg
            # alone would wait on the cancelled query.
            bound = 3 * (probe_timeout(config) + INTERVAL)
            await eventually(lambda: not _primary(manager)["healthy"], bound)
            report = manager.health_report()
            assert report["overall_status"] == "degraded"
            assert report["active_backend"] == "fallback"
            assert "probe timed out" in report["primary_checkpointer"]["last_error"]

            # The loop goes on probing, and heals once the server answers again.
            down_at = _primary(manager)["checked_at"]
            await eventually(lambda: _primary(manager)["checked_at"] != down_at, bound)
            proxy.forward()
            await eventually(lambda: manager.health_report()["overall_status"] == "healthy", 10)
        finally:
            await manager.cleanup()
