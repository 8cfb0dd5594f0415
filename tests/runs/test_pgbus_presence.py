"""A replica that no other replica listens to sends no NOTIFY (each was a transaction and
a commit of its own, issue 15); one that starts listening says hello and hears the
others' notifications from then on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.records import EventRecord
from code_hero.runs.pgbus import EVENTS_CHANNEL, PostgresBus
from tests.graphql.clients import eventually

pytestmark = pytest.mark.postgres


def event(seq: int) -> EventRecord:
    return EventRecord("r1", "t1", seq, "status", {"status": "RUNNING"}, datetime.now(UTC))


@pytest.fixture
async def pool(pg_database: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(
        pg_database, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    ) as pool:
        yield pool


def bus(url: str, pool: AsyncConnectionPool[Any]) -> PostgresBus:
    return PostgresBus(url, lambda: pool, lambda: None, lambda _: True, presence_interval=0.05)  # type: ignore[arg-type,return-value]


def notifies_sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The pg_notify statements sent on any async connection from now on."""
    sent: list[str] = []
    real = psycopg.AsyncConnection.execute

    async def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if "pg_notify" in str(query):
            sent.append(str(query))
        return await real(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "execute", counted)
    return sent


async def test_a_lone_replica_notifies_nobody_until_another_says_hello(
    pg_database: str, pool: AsyncConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = bus(pg_database, pool)
    controls: list[str] = []
    a.on_control(controls.append)
    await a.start()
    other: PostgresBus | None = None
    # Not a replica's listener (not named as one): it hears what is sent, nothing more.
    async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as raw:
        await raw.execute(f"LISTEN {EVENTS_CHANNEL}")
        try:
            await eventually(lambda: not a.others_listen)
            sent = notifies_sent(monkeypatch)
            await a.stored([event(1)], control="runs")
            await a.send_control("cancel r1")
            assert sent == []
            # Its own claimers and subscribers hear it in-process, as they would have.
            assert controls == ["runs", "cancel r1"]
            other = bus(pg_database, pool)
            await other.start()  # listening, it says hello: A notifies again at once
            await eventually(lambda: a.others_listen)
            sent.clear()  # the other's hello
            await a.stored([event(2)])
            assert len(sent) == 1
            notes = raw.notifies(timeout=30, stop_after=1)
            assert [n.payload async for n in notes] == ["r1 t1 2 2"]
        finally:
            await a.close()
            if other is not None:
                await other.close()


async def test_a_replica_notifies_while_another_listens(
    pg_database: str, pool: AsyncConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = bus(pg_database, pool), bus(pg_database, pool)
    await a.start()
    await b.start()
    try:
        await eventually(lambda: None not in (a._listener_pid, b._listener_pid))
        looks = a.looks
        await eventually(lambda: a.looks >= looks + 2)  # a whole look with both listening
        assert a.others_listen
        sent = notifies_sent(monkeypatch)
        await a.stored([event(1)])
        assert len(sent) == 1
    finally:
        await a.close()
        await b.close()
