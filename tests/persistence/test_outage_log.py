"""An outage logs one WARNING when it starts, however long it lasts.

A server that starts with its database down tries to open it at every probe:
each failed try is the same news, not another warning (the README promises one
line when an outage starts and one when it ends). Nor do the background loops
that meet the outage before the router does (the webhooks' claims, the
PostgreSQL bus's pokes) add lines of their own. What is no outage still warns from
them: a saturated pool on a serving database, a SQLite write refused by its disk
(once a minute at most).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest

from code_hero.checkpointing import (
    EnhancedCheckpointerManager,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
)
from code_hero.persistence import slots
from code_hero.persistence.pg_backend import PostgresBackend
from code_hero.persistence.unreachable import BackgroundLog
from code_hero.runs.webhooks import WebhookSettings
from tests.conftest import PG_ADMIN_URL
from tests.faults import BlackHoleProxy, until, with_port
from tests.graphql.clients import eventually
from tests.persistence.proxied import behind_a_proxy, degraded, synced

PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("code_hero")
    ]


@pytest.mark.postgres
async def test_a_database_down_at_start_warns_once_not_at_every_probe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="code_hero")
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        proxy.refuse()  # refused at once: a database that is down
        config = create_postgres_checkpointer(
            with_port(PG_ADMIN_URL, proxy.port), pool_timeout=1, health_check_interval=0.05
        )
        manager = EnhancedCheckpointerManager(config)
        assert await manager.initialize() is False
        try:
            at_start = _warnings(caplog)
            assert at_start, "the outage's start is logged"
            tries = proxy.accepted
            await eventually(lambda: proxy.accepted >= tries + 3, 30)  # probes tried again
            assert manager.health_report()["overall_status"] == "degraded"
            assert _warnings(caplog) == at_start
        finally:
            await manager.cleanup()


@pytest.mark.postgres
async def test_an_open_failing_another_way_warns_again_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="code_hero")
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        proxy.refuse()
        config = create_postgres_checkpointer(
            with_port(PG_ADMIN_URL, proxy.port), pool_timeout=1, health_check_interval=0.05
        )
        manager = EnhancedCheckpointerManager(config)
        assert await manager.initialize() is False
        try:
            at_start = _warnings(caplog)
            assert at_start
            tries = proxy.accepted
            await eventually(lambda: proxy.accepted >= tries + 2, 30)
            assert _warnings(caplog) == at_start  # the same refusal: no news
            proxy.black_hole()  # now it hears nothing: another failure, news once
            await eventually(lambda: len(_warnings(caplog)) > len(at_start), 60)
            changed = _warnings(caplog)
            assert changed[: len(at_start)] == at_start
            tries = proxy.accepted
            await eventually(lambda: proxy.accepted >= tries + 2, 60)  # failing so again
            assert _warnings(caplog) == changed
            assert len(changed) == len(at_start) + 1
        finally:
            await manager.cleanup()


@pytest.mark.postgres
async def test_an_open_failing_two_ways_in_turn_warns_once_for_each(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="code_hero")
    failures = [ConnectionRefusedError("refused"), TimeoutError("timed out")] * 3

    class Unopened:
        enforce_references = False
        description = "a database down"

    class Failing:
        async def run(self, call: Any, seconds: float, what: str, **_: Any) -> None:
            call.close()
            raise failures.pop(0)

    monkeypatch.setattr(slots, "open_backend", lambda config: Unopened())
    slot = slots.BackendSlot("primary", create_postgres_checkpointer(PG_ADMIN_URL))
    for _ in range(len(failures)):  # refused, timed out, refused, ...: each probe's open
        await slot.open(Failing(), enforce_references=False)  # type: ignore[arg-type]
    assert failures == []  # each open called the fake (a fake the call refuses loops no more)
    assert len(_warnings(caplog)) == 2, _warnings(caplog)


def _logged(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> bool:
    return any(r.name == logger and text in r.getMessage() for r in caplog.records)


@pytest.mark.postgres
async def test_the_background_loops_add_no_warning_to_an_outages_two(
    caplog: pytest.LogCaptureFixture, pg_database: str
) -> None:
    # The webhooks' claim and the bus's poke each met the outage before the router
    # did (no probe comes here until the test asks) and logged a WARNING of their own.
    caplog.set_level(logging.DEBUG, logger="code_hero")
    webhooks = WebhookSettings(poll_interval=0.05, idle_poll=0.05)
    async with behind_a_proxy(pg_database, health_check_interval=3600, webhooks=webhooks) as (
        gw,
        proxy,
    ):
        bus: Any = gw.services.bus
        await eventually(lambda: not bus.others_listen, 30)  # alone: a cut sends a poke
        caplog.clear()
        proxy.refuse()
        await eventually(
            lambda: (
                _logged(caplog, "code_hero.runs.webhooks", "claiming webhook deliveries")
                and _logged(caplog, "code_hero.runs.pgbus", "poke for the replicas")
            ),
            30,
        )
        router = gw.manager.router
        await router.check()  # the probe: the outage begins
        assert await degraded(gw)
        proxy.forward()
        await router.check()  # and ends
        await until(lambda: synced(gw))
        warned = _warnings(caplog)
        assert len(warned) == 2, warned
        assert "switching to fallback" in warned[0] and "serves again" in warned[1]


@pytest.mark.postgres
async def test_a_saturated_pool_that_stalls_webhook_claims_warns(
    caplog: pytest.LogCaptureFixture, pg_database: str
) -> None:
    # No outage: the router calls a full pool on a healthy database busy and logs
    # nothing, so the claim loop's own line is all that says deliveries stall. It
    # logged it at DEBUG, as an outage's.
    caplog.set_level(logging.DEBUG, logger="code_hero")
    webhooks = WebhookSettings(poll_interval=0.05, idle_poll=0.05)
    async with behind_a_proxy(
        pg_database, webhooks=webhooks, pool_min_size=2, pool_max_size=2, pool_timeout=0.3
    ) as (gw, _proxy):
        router = gw.manager.router
        pool = cast(PostgresBackend, router.primary.backend).pool
        caplog.clear()
        async with contextlib.AsyncExitStack() as held:
            for _ in range(pool.max_size):
                await held.enter_async_context(pool.connection())
            claims = "claiming webhook deliveries failed"
            await eventually(lambda: _logged(caplog, "code_hero.runs.webhooks", claims), 30)
            await eventually(lambda: sum(claims in r.getMessage() for r in caplog.records) >= 3, 30)
        assert router.serving  # only busy: nothing failed over
        failed = [r for r in caplog.records if claims in r.getMessage()]
        # One WARNING, the claims after it within the minute at DEBUG.
        assert [r.levelno for r in failed][:3] == [logging.WARNING, logging.DEBUG, logging.DEBUG]


def _full_disk_error(path: Path) -> sqlite3.Error:
    """What SQLite raises for a write when the disk (here max_page_count) is full."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
        conn.commit()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        conn.execute("INSERT INTO filler VALUES (zeroblob(1000000))")
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("the write went in")


def _read_only_error(path: Path) -> sqlite3.Error:
    """What SQLite raises for a write to a file it opened read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute("INSERT INTO filler VALUES (1)")
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("the write went in")


async def test_a_sqlite_write_refused_by_a_full_or_read_only_disk_warns(
    tmp_path: Path,
) -> None:
    # SQLite's probe reads, so the router does not declare these outages on its own:
    # a background loop that logged them at DEBUG, as the outage's, hid every failing
    # write on a server with no other traffic.
    manager = EnhancedCheckpointerManager(
        create_sqlite_checkpointer(str(tmp_path / "checkpoints.sqlite"))
    )
    assert await manager.initialize()
    try:
        router = manager.router
        for error in (
            _full_disk_error(tmp_path / "full.sqlite"),
            _read_only_error(tmp_path / "full.sqlite"),
        ):
            await router.check()
            assert router.serving
            assert router.background_level(error) == logging.WARNING, error
    finally:
        await manager.cleanup()


def test_a_background_loop_warns_at_most_once_a_minute_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="code_hero")
    logger = logging.getLogger("code_hero.test_background")
    now = [0.0]
    failures = BackgroundLog(logger, lambda exc: logging.WARNING, clock=lambda: now[0])
    for n in range(3):
        failures.failed(RuntimeError("busy"), "try %d failed", n)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "try 0 failed"),
        (logging.DEBUG, "try 1 failed"),
        (logging.DEBUG, "try 2 failed"),
    ]
    now[0] = 59.0
    caplog.clear()
    failures.failed(RuntimeError("busy"), "try %d failed", 3)
    now[0] = 60.0  # the minute is up
    failures.failed(RuntimeError("busy"), "try %d failed", 4)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "try 3 failed"),
        (logging.WARNING, "try 4 failed (3 more since the last warning, logged at DEBUG)"),
    ]
