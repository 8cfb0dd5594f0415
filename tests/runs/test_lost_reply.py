"""A write PostgreSQL committed whose reply never came is not written twice.

The connection is cut after the server ran (and committed) a batch of a run's
events, or its end, before its answer reached the gateway (`ReplyLosingProxy`):
to the gateway the write failed, and the events go on to be stored again, on
the fallback and copied back, or on the primary. The run's log must still hold
each of its events once, seq 1..N with no gap, its final status event last,
the very events its follower saw live, and its row must say SUCCESS.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from code_hero.gateway import Gateway
from code_hero.persistence.fallback_state import PrimaryUnreachableError
from code_hero.persistence.records import EventRecord, RunStatus
from code_hero.runs.events import EventType
from code_hero.runs.executor import StartRun
from tests.faults import ReplyLosingProxy, until
from tests.persistence.proxied import behind_a_proxy, synced

pytestmark = pytest.mark.postgres

# The statement of a batch of events (`PostgresRegistry._events_statement`), and of a
# run's end in one trip (`PostgresRegistry.finish_run`).
BATCH = b"ev AS (INSERT INTO code_hero_run_events"
END = b"stored AS (INSERT INTO code_hero_run_events"


async def _follow(
    gw: Gateway, run_id: str, stream: AsyncIterator[EventRecord], early: list[EventRecord]
) -> list[EventRecord]:
    """The run's events as a client follows them: answered UNAVAILABLE (a read of its
    log during the outage the lost reply begins, on a loaded machine its first read even:
    a run's early events are the primary's alone then), it follows again after the last
    seq it saw, as the error says to."""
    seen = list(early)
    while True:
        try:
            async for event in stream:
                seen.append(event)
            return seen
        except PrimaryUnreachableError:
            await asyncio.sleep(0.1)
            stream = _follow_again(gw, run_id, after_seq=seen[-1].seq if seen else 0)


async def _follow_again(gw: Gateway, run_id: str, after_seq: int) -> AsyncIterator[EventRecord]:
    async for event in await gw.follow_run(run_id, after_seq=after_seq):  # may raise too
        yield event


def _stored(url: str, run_id: str) -> tuple[Any, list[tuple[Any, ...]]]:
    """The run's status and events as PostgreSQL holds them, read directly."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT status FROM code_hero_runs WHERE run_id = %s", (run_id,))
        (status,) = row.fetchone() or (None,)
        events = conn.execute(
            "SELECT seq, type, payload FROM code_hero_run_events WHERE run_id = %s ORDER BY seq",
            (run_id,),
        ).fetchall()
    return status, events


async def _run_with_a_lost_reply(
    pg_database: str,
    statement: bytes,
    delay: float,
    number: str | None = None,
    **config: Any,
) -> tuple[list[EventRecord], list[EventRecord], Any, list[tuple[Any, ...]]]:
    """Run the slow graph (`delay` a step) with the reply to its first `statement`
    lost; the events its follower saw, a read of its log, and its status and events in
    PostgreSQL. With `number`, every step's update carries it as a float, and the
    reply lost is of the first such statement after the first step's update was seen
    (a float in the run's input would reach the graph as jsonb gives it back)."""
    async with behind_a_proxy(pg_database, proxy_class=ReplyLosingProxy, **config) as (
        gw,
        proxy,
    ):
        run_input: dict[str, Any] = {"delay": delay}
        if number is not None:
            run_input["number"] = number
        else:
            lost = proxy.lose_reply(statement)
        run = await gw.start_run(StartRun(graph="slow", input=run_input))
        stream = await gw.follow_run(run.run_id)
        early: list[EventRecord] = []
        if number is not None:
            async for event in stream:
                early.append(event)
                if event.type == EventType.NODE_UPDATE.value:
                    break
            lost = proxy.lose_reply(statement)
        follower = asyncio.create_task(_follow(gw, run.run_id, stream, early))
        async with asyncio.timeout(30):  # guards, not measures
            await lost.wait()
            seen = await follower
            final = await gw.executor.wait(run.run_id)
        assert proxy.lost == [True]  # the trip whose answer was lost committed
        await until(lambda: synced(gw))
        assert final.status is RunStatus.SUCCESS
        read = await _read_all(gw, run.run_id)
        status, stored = _stored(pg_database, run.run_id)
    return seen, read, status, stored


async def _read_all(gw: Gateway, run_id: str) -> list[EventRecord]:
    """The run's log as `runEvents` pages it."""
    events: list[EventRecord] = []
    while page := await gw.run_events(run_id, after_seq=events[-1].seq if events else 0, first=3):
        events += page
    return events


def _assert_once_each(
    seen: list[EventRecord], read: list[EventRecord], status: Any, stored: list[tuple[Any, ...]]
) -> None:
    assert status == RunStatus.SUCCESS.value
    assert [seq for seq, _, _ in stored] == list(range(1, len(stored) + 1))
    _, last_type, last_payload = stored[-1]
    assert (last_type, last_payload["status"]) == (EventType.STATUS.value, "SUCCESS")
    assert [(e.seq, e.type) for e in read] == [(seq, type_) for seq, type_, _ in stored]
    # The events stored are those published: none dropped and numbered again.
    assert [(e.seq, e.type, e.payload) for e in seen] == [tuple(row) for row in stored]


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback", "no-fallback"])
async def test_a_batch_whose_commit_reply_is_lost_is_stored_once(
    pg_database: str, fallback: bool
) -> None:
    # The run outlasts the outage the lost reply begins (the probe finds the database
    # again within 0.2 s): the batch is stored again while it goes on, not with its end.
    stored = await _run_with_a_lost_reply(pg_database, BATCH, 0.3, enable_fallback=fallback)
    _assert_once_each(*stored)


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback", "no-fallback"])
async def test_an_end_whose_commit_reply_is_lost_is_stored_once(
    pg_database: str, fallback: bool
) -> None:
    stored = await _run_with_a_lost_reply(pg_database, END, 0, enable_fallback=fallback)
    _assert_once_each(*stored)


@pytest.mark.parametrize("number", ["1e23", "1.5e300"])
async def test_a_batch_whose_floats_come_back_as_other_numbers_is_stored_once(
    pg_database: str, number: str
) -> None:
    # jsonb kept 1e23 as the integer 100000000000000000000000 until the registry wrote
    # it `...000.0` (jsonbfloats), and still reads -0.0 back as 0.0: events stored whose
    # payload reads back unequal to the writer's own are still told from another's.
    seen, read, status, stored = await _run_with_a_lost_reply(
        pg_database, BATCH, 0.3, number=number, enable_fallback=False
    )
    assert [seq for seq, _, _ in stored] == list(range(1, len(stored) + 1))
    assert [(e.seq, e.type) for e in seen] == [(seq, type_) for seq, type_, _ in stored]
    assert [(e.seq, e.type) for e in read] == [(seq, type_) for seq, type_, _ in stored]
    assert stored[-1][1:] == (EventType.STATUS.value, {"status": "SUCCESS", "error": None})
    assert status == RunStatus.SUCCESS.value
