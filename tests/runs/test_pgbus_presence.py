"""A replica that no other replica listens to sends no NOTIFY (each was a transaction and
a commit of its own, issue 15); one that starts listening says hello and hears the
others' notifications from then on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.records import EventRecord
from code_hero.runs.bus import POKE
from code_hero.runs.pgbus import CONTROL_CHANNEL, EVENTS_CHANNEL, LISTENER_NAME, PostgresBus
from tests.conftest import PG_ADMIN_URL
from tests.faults import BlackHoleProxy, with_port
from tests.graphql.clients import eventually

pytestmark = pytest.mark.postgres
PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432


def event(seq: int) -> EventRecord:
    return EventRecord("r1", "t1", seq, "status", {"status": "RUNNING"}, datetime.now(UTC))


@pytest.fixture
async def pool(pg_database: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(
        pg_database,
        min_size=1,
        max_size=2,
        kwargs={"autocommit": True, "row_factory": dict_row},  # as the backend's pool
        open=False,
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


async def notifies_of_one_batch(bus: PostgresBus, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many NOTIFYs `bus` sends as it stores one batch of events."""
    sent = notifies_sent(monkeypatch)
    await bus.stored([event(1)])
    return len(sent)


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
            # The other's hello, then A's poke for it (sent by a task of its own once A
            # hears the hello: waiting for the flag alone let it land after the clear).
            await eventually(lambda: a.others_listen and len(sent) >= 2)
            sent.clear()
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
        assert await notifies_of_one_batch(a, monkeypatch) == 1
    finally:
        await a.close()
        await b.close()


async def kill_listener(url: str, bus: PostgresBus) -> None:
    """End the bus's LISTEN connection from the server side and wait for its reconnect."""
    pid = bus._listener_pid
    assert pid is not None
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))
        # The backend is gone: a hello sent now is one the bus cannot hear.
        await conn.execute("SELECT pg_notify(%s, 'hello another-replica')", (CONTROL_CHANNEL,))
    await eventually(lambda: bus._listener_pid not in (None, pid))


async def test_a_lone_replica_notifies_again_once_its_listener_reconnects(
    pg_database: str, pool: AsyncConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hello sent while its listener was down went unheard: until a look with the
    new connection finds nobody, it notifies."""
    a = bus(pg_database, pool)
    await a.start()
    try:
        await eventually(lambda: not a.others_listen)
        a.presence_interval = 3600  # no look after the reconnect: what it says stands
        looks = a.looks
        await eventually(lambda: a.looks > looks)  # the last look: alone
        assert not a.others_listen
        await kill_listener(pg_database, a)
        assert a.others_listen
        assert await notifies_of_one_batch(a, monkeypatch) == 1
    finally:
        await a.close()


class LookThatOutlivesItsListener:
    """A pool whose next connection, once handed back, holds the one who took it until
    the bus's listener was killed and reconnected: a look that began with the old
    listener concludes after the new one said hello."""

    def __init__(self, url: str, pool: AsyncConnectionPool[Any]) -> None:
        self.url, self.pool = url, pool
        self.bus: PostgresBus | None = None
        self.looks_then: int | None = None  # the bus's looks when the hold ended

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        async with self.pool.connection() as conn:
            yield conn
        if self.bus is not None:
            bus, self.bus = self.bus, None
            await kill_listener(self.url, bus)
            self.looks_then = bus.looks


async def test_a_look_that_began_with_a_lost_listener_does_not_stop_the_notifications(
    pg_database: str, pool: AsyncConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    held = LookThatOutlivesItsListener(pg_database, pool)
    a = PostgresBus(pg_database, lambda: held, lambda: None, lambda _: True, presence_interval=0.05)  # type: ignore[arg-type,return-value]
    await a.start()
    try:
        await eventually(lambda: not a.others_listen)
        a.presence_interval = 3600  # after the held look, none: what it concluded stands
        held.bus = a
        await eventually(lambda: held.looks_then is not None and a.looks > held.looks_then)
        assert a.others_listen
        assert await notifies_of_one_batch(a, monkeypatch) == 1
    finally:
        await a.close()


async def test_a_look_that_cannot_see_our_own_listener_concludes_nothing(
    pg_database: str, pool: AsyncConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a proxy that does not pass application_name on, no listener is seen, the
    others' neither: the replica keeps notifying."""
    real = psycopg.AsyncConnection.connect

    async def renamed(*args: Any, **kwargs: Any) -> Any:
        if "application_name" in kwargs:
            kwargs["application_name"] = "proxy"
        return await real(*args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", renamed)
    a = bus(pg_database, pool)
    await a.start()
    try:
        await eventually(lambda: a._listener_pid is not None)
        looks = a.looks
        await eventually(lambda: a.looks >= looks + 2)  # a whole look with it listening
        assert a.others_listen
        assert await notifies_of_one_batch(a, monkeypatch) == 1
    finally:
        await a.close()


async def test_a_replica_not_notifying_pokes_the_one_that_says_hello(
    pg_database: str, pool: AsyncConnectionPool[Any]
) -> None:
    """What it stored between the hello's commit and its hearing it went unnotified:
    the newcomer's subscribers re-read the log."""
    a = bus(pg_database, pool)
    b = bus(pg_database, pool)
    await a.start()
    try:
        await eventually(lambda: not a.others_listen)
        a.presence_interval = 3600  # no look sees B first: its hello turns A on
        looks = a.looks
        await eventually(lambda: a.looks > looks)
        assert not a.others_listen
        on_run, on_thread = b.subscribe(run_id="r1"), b.subscribe(thread_id="t1")
        await b.start()  # a first connect: B pokes nobody itself
        await eventually(lambda: on_run.overflowed and on_thread.overflowed)
    finally:
        await a.close()
        await b.close()


async def test_a_replica_not_notifying_pokes_when_a_look_finds_another(
    pg_database: str, pool: AsyncConnectionPool[Any]
) -> None:
    """A hello missed (our listener half-open, say): what we stored since it went
    unnotified, the look that finds the other replica pokes."""
    a = bus(pg_database, pool)
    await a.start()
    try:
        await eventually(lambda: not a.others_listen)
        mine = a.subscribe(run_id="r1")  # a poke names nobody: ours hear it too
        # Named as a replica's listener, it says no hello: only a look finds it.
        async with await psycopg.AsyncConnection.connect(
            pg_database, autocommit=True, application_name=LISTENER_NAME
        ):
            await eventually(lambda: a.others_listen)
            await eventually(lambda: mine.overflowed)
    finally:
        await a.close()


class _HandingPool:
    """A pool whose wait for a connection is `asyncio.wait_for`, as psycopg_pool's
    getconn is: a cancel that comes as a connection is handed over is dropped."""

    def __init__(self) -> None:
        self.handed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        await asyncio.wait_for(self.handed.wait(), 30)

        class Conn:
            async def execute(self, *args: Any) -> Any:
                class Cursor:
                    async def fetchone(self) -> Any:
                        return {"n": 0, "ours": True}  # alone: no other listener, ours seen

                return Cursor()

        yield Conn()


@pytest.mark.parametrize("turns", [0, 1, 2])
async def test_close_ends_the_look_whose_wait_for_a_connection_dropped_the_cancel(
    turns: int,
) -> None:
    """close() cancels the look as the pool hands it a connection: the cancel is lost in
    wait_for, and the look must still end (it looked on for ever, close() waiting)."""
    pool = _HandingPool()
    a = PostgresBus("unused", lambda: pool, lambda: None, lambda _: True, presence_interval=0.01)  # type: ignore[arg-type,return-value]
    a._listener_pid = 1
    a._presence = asyncio.create_task(a._watch_presence())
    await asyncio.sleep(0.01)  # the look waits for a connection
    pool.handed.set()  # handed over: wait_for's inner wait is done
    for _ in range(turns):
        await asyncio.sleep(0)
    closing = asyncio.create_task(a.close())
    await asyncio.wait([closing], timeout=10)  # a guard against the hang, not a measure
    ended = closing.done()
    if not ended:  # end it, for the next test: a second cancel lands
        a._presence.cancel()
        await closing
    assert ended
    assert a._presence.done()
    assert not a._pokes


async def test_a_start_in_an_outage_goes_on_at_the_first_refusal_and_pokes_once_listening(
    pg_database: str, pool: AsyncConnectionPool[Any]
) -> None:
    """A gateway started while its database was down waited 5 s for the listener (its
    start-up held that long, serving from its fallback after). `start` now goes on at
    the listener's first refused connection; when the listener connects later, it pokes:
    notifications sent meanwhile went unheard, and subscribers re-read the log."""
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        proxy.refuse()
        b = bus(with_port(pg_database, proxy.port), pool)
        controls: list[str] = []
        b.on_control(controls.append)
        try:
            await b.start()
            assert b.listener_failures == 1  # went on at the first (5 s: a retry each)
            assert controls == []
            proxy.forward()
            await eventually(lambda: controls == [POKE])  # once listening
        finally:
            await b.close()
