"""Replicas whose clocks disagree on one PostgreSQL database: leases are the database's
time, whatever this process's clock says (`code_hero.persistence.clock`).

A replica's skewed clock is `clock.wall` moved by the test; the other replica, with the
right time, is the test writing through the registry with the database's `now()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, tzinfo

import psycopg
import pytest

from code_hero.config import create_postgres_checkpointer, create_sqlite_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence import clock, slots, stalls
from code_hero.persistence.records import RunStatus
from code_hero.persistence.tombstones import deleted_copies
from code_hero.runs.executor import StartRun
from tests.runs.conftest import SLOW_SPEC

SKEW = timedelta(seconds=30)  # twice the lease


@pytest.fixture(autouse=True)
def own_clock() -> Iterator[None]:
    clock.reset()
    yield
    clock.reset()


def skewed(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    """This process's wall clock runs `by` ahead of the database's (behind if negative)."""
    real = clock.wall
    monkeypatch.setattr(clock, "wall", lambda: real() + by)


async def open_gateway(config: object) -> Gateway:
    settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_SPEC})  # type: ignore[arg-type]
    return await Gateway(settings).__aenter__()


@pytest.fixture
async def pg_gateway(
    pg_database: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[Gateway]:
    skewed(monkeypatch, request.param)
    gw = await open_gateway(create_postgres_checkpointer(pg_database))
    try:
        yield gw
    finally:
        await gw.__aexit__(None, None, None)


def db_now(url: str) -> datetime:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("pg_gateway", [SKEW], indirect=True)
async def test_a_replica_ahead_leaves_a_live_lease_alone(
    pg_gateway: Gateway, pg_database: str
) -> None:
    """Its clock 30 s ahead, a 15 s lease another replica renewed just now looks lapsed
    to its own clock: the claim would take the run over while its owner runs it."""
    gw = pg_gateway
    claims = gw.executor.claims
    slots, claims.max_concurrent = claims.max_concurrent, 0  # nothing claimed meanwhile
    await gw.executor.recover()
    run = await gw.start_run(StartRun(graph="slow", input={}))
    # The other replica, its clock right, holds it: a lease 15 s from its end.
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            "UPDATE code_hero_runs SET lease_owner = 'replica-on-time', "
            "lease_expires_at = now() + interval '15 seconds' WHERE run_id = %s",
            [run.run_id],
        )
    claims.max_concurrent = slots
    assert await gw.executor.recover() == 0, "a lease 15 s from its end is taken over"
    record = await gw.manager.registry.get_run(run.run_id)
    assert record is not None and record.lease_owner == "replica-on-time"


@pytest.mark.parametrize("pg_gateway", [-SKEW], indirect=True)
async def test_a_replica_behind_writes_leases_that_last(
    pg_gateway: Gateway, pg_database: str
) -> None:
    """Its clock 30 s behind, the lease it writes would have lapsed 15 s ago by the
    database's (every other replica's) time: they would take its runs over at once."""
    gw = pg_gateway
    claims = gw.executor.claims
    claims.max_concurrent = 0
    await gw.executor.recover()
    run = await gw.start_run(StartRun(graph="slow", input={"delay": 60}))
    claims.max_concurrent = 1
    assert await gw.executor.recover() == 1
    record = await gw.manager.registry.get_run(run.run_id)
    assert record is not None and record.lease_expires_at is not None
    # Its own clock (30 s behind) is no measure: the database's is.
    assert record.lease_expires_at > db_now(pg_database) + timedelta(seconds=10)
    with psycopg.connect(pg_database, autocommit=True) as conn:  # another replica claims
        taken = conn.execute(
            "UPDATE code_hero_runs SET lease_owner = 'replica-on-time' "
            "WHERE run_id = %s AND lease_expires_at < now() RETURNING run_id",
            [run.run_id],
        ).fetchall()
    assert taken == [], "another replica takes over a run executing here"
    await gw.cancel_run(run.run_id)


@pytest.mark.parametrize("pg_gateway", [SKEW], indirect=True)
async def test_a_skewed_clock_is_measured_and_logged(
    pg_gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    assert abs(clock.offset() + SKEW) < timedelta(seconds=5)
    with caplog.at_level(logging.WARNING, logger="code_hero.persistence.clock"):
        clock.reset()
        await pg_gateway.manager.probe_health()  # the probe measures it again
    assert "ahead of the database's" in caplog.text
    assert abs(clock.offset() + SKEW) < timedelta(seconds=5)


async def test_sqlite_keeps_the_process_clock(
    sqlite_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process, one clock: nothing to measure, the times are its own."""
    skewed(monkeypatch, SKEW)
    gw = await open_gateway(create_sqlite_checkpointer(sqlite_path))  # type: ignore[arg-type]
    try:
        run = await gw.start_run(StartRun(graph="slow", input={}, wait=True))
        assert run.status is RunStatus.SUCCESS, run.error
        assert clock.offset() == timedelta(0)
    finally:
        await gw.__aexit__(None, None, None)


def test_the_offset_moves_only_past_the_jitter_of_a_round_trip() -> None:
    # A probe's round trip jitters by a fraction of a millisecond: moved by each, the
    # times written would step back and forth at every probe.
    clock.reset()
    try:
        t = datetime(2026, 1, 1, tzinfo=UTC)
        ms = timedelta(milliseconds=1)
        clock.measured(t, t + ms / 2 + 3 * ms, t + ms)  # clocks in sync, 3 ms of noise
        assert clock.offset() == timedelta(0)
        clock.measured(t, t + 30 * 1000 * ms, t + ms)  # 30 s ahead: moved
        assert clock.offset() == timedelta(seconds=30) - ms / 2
        moved = clock.offset()
        clock.measured(t, t + 30 * 1000 * ms + 40 * ms, t + ms)  # noise around it
        assert clock.offset() == moved
        # A slow probe (2 s there and back) says little: 0.8 s off is within its half.
        clock.measured(t, t + 1000 * ms + 30 * 1000 * ms + 800 * ms, t + 2000 * ms)
        assert clock.offset() == moved
    finally:
        clock.reset()


class _AheadDatetime(datetime):
    """`datetime` whose `now` reads this process's clock `SKEW` ahead."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
        return datetime.now(tz) + SKEW


@pytest.mark.parametrize("pg_gateway", [SKEW], indirect=True)
async def test_a_replica_ahead_counts_an_outage_from_the_databases_time(
    pg_gateway: Gateway, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage counts from the primary's last answer (`outage_began`): the copy-back
    drops a thread another replica deleted after it, and `lease_clock` and
    `_lapsed_before_outage` judge leases by it. Taken from this process's own clock
    (30 s ahead), a deletion made just after it looks 30 s before it."""
    router = pg_gateway.manager.router
    # The whole process's clock is ahead, not only `clock.wall`: so is every
    # `datetime.now` this process reads (here, the slot's, which times the answer).
    monkeypatch.setattr(slots, "datetime", _AheadDatetime)
    await pg_gateway.manager.probe_health()  # the primary answers: the last answer
    began = router.primary.answered_at
    assert began is not None
    # Another replica, its clock right, deletes a thread just after that answer: a
    # second after, past the error the database's time is known here with (the probe's
    # half round trip, 50 ms at least; CI once saw a deletion at once judged before).
    # Taken from this process's clock, the answer would still be 29 s later.
    await asyncio.sleep(1)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO code_hero_deleted_threads (thread_id, created_at, deleted_at) "
            "VALUES ('gone', now() - interval '1 hour', clock_timestamp())"
        )
    primary, fallback = router.primary.backend, router.slots[1].backend
    assert primary is not None and fallback is not None
    gone = await deleted_copies(primary, fallback, {"gone"}, began)
    assert "gone" in gone, "a thread deleted after the outage began is copied back"


async def test_a_replica_ahead_sees_a_stall_at_the_databases_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`_lapsed_before_outage` asks the stall watch whether a lease (the database's
    time) lapsed in a stall of this process: the stall, timed by this process's own
    clock 30 s ahead, lies 30 s after the lease that lapsed in it."""
    skewed(monkeypatch, SKEW)
    monkeypatch.setattr(stalls, "datetime", _AheadDatetime)
    clock.measured(clock.wall(), datetime.now(UTC), clock.wall())  # the database's clock
    watch = stalls.StallWatch(tick=0.05, tolerance=0.3)
    watch.start()
    try:
        await asyncio.sleep(0.2)  # ticking
        time.sleep(1)  # noqa: ASYNC251 - the stall: the loop does not run
        lapsed = clock.now() - timedelta(seconds=0.5)  # a lease that lapsed in the stall
        await asyncio.sleep(0.2)  # the watch ticks and records it
        assert watch.covers(lapsed, began_before=clock.now()), "a lease lapsed in a stall"
    finally:
        await watch.stop()
