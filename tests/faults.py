"""Network faults on 127.0.0.1 for tests: a server that never answers, a proxy that goes silent.

    HungServer      accepts TCP connections and never writes a byte: a database
                    that is up at the TCP level and answers nothing
    BlackHoleProxy  forwards bytes both ways to a real server; after
                    `black_hole()` it keeps accepting and keeps every connection
                    open but forwards nothing; after `refuse()` it closes every
                    connection at once (a server that is down); `forward()` heals
    ReplyLosingProxy a BlackHoleProxy that reads PostgreSQL's protocol: after
                    `lose_reply(text)` the next trip that runs a statement holding
                    `text` is run (committed, when its Sync ends its transaction)
                    and its reply never arrives: the connection is cut instead

All are async context managers bound to a random port; `with_port` points a
database URL at them. `cancelled_at_every_step` cancels a call at each await of its
course and says after which steps it left a pooled connection broken. `until` polls
for what an outage or a recovery brings about; `on_the_primary` waits until a manager
serves from its primary (under load, one opened with a short pool_timeout may have
begun on its fallback). `held_writes` holds a router's
checkpoint writes until the test lets them go (a run held mid-way).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import psycopg

__all__ = [
    "BlackHoleProxy",
    "HungServer",
    "ReplyLosingProxy",
    "a_lock_waits",
    "cancelled_at_every_step",
    "held_writes",
    "on_the_primary",
    "until",
    "with_port",
]

CHUNK = 65536


async def until(predicate: Callable[[], Awaitable[bool]], limit: float = 60.0) -> None:
    """Poll `predicate` until it holds; fail after `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def a_lock_waits(url: str, other_than: int = 0) -> bool:
    """Whether a session of `url`'s database (not the backend `other_than`) waits for a
    lock. Looked at from a connection of its own: inside a transaction, pg_stat_activity's
    sessions are those of the transaction's first look, so one opened later (a pool
    growing under load) is never seen waiting."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as look:
        cur = await look.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> %s",
            (other_than,),
        )
        row = await cur.fetchone()
    return row is not None and row[0] > 0


async def on_the_primary(manager: Any) -> None:
    """Wait until the manager serves from its primary. Its open is bounded (three times
    pool_timeout): on a loaded machine a short timeout runs out and it begins on its
    fallback, as it should, until a probe opens the primary; each look probes now."""

    async def serving() -> bool:
        if not manager.router.serving:
            await manager.probe_health()
        return bool(manager.router.serving)

    await until(serving)


def held_writes(
    monkeypatch: Any, router: Any, holds: Callable[[str], bool] = lambda thread: True
) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the router's checkpoint writes to the threads `holds` names: the first sets
    `reached`, and each waits until `go_on` is set. Returns (reached, go_on)."""
    write = router.write
    reached, go_on = asyncio.Event(), asyncio.Event()

    async def held(operation: str, thread: str, *args: Any, **kw: Any) -> Any:
        if holds(thread) and not go_on.is_set():
            reached.set()
            await go_on.wait()
        return await write(operation, thread, *args, **kw)

    monkeypatch.setattr(router, "write", held)
    return reached, go_on


def with_port(url: str, port: int) -> str:
    """The URL with its host and port replaced by 127.0.0.1:port (user and path kept)."""
    parsed = urlparse(url)
    user = f"{parsed.username}@" if parsed.username else ""
    return parsed._replace(netloc=f"{user}127.0.0.1:{port}").geturl()


async def cancelled_at_every_step(
    pool: Any, call: Callable[[int], Awaitable[object]], steps: int
) -> list[int]:
    """Start `call(n)` and cancel it after n event-loop steps, for n in range(steps); the
    steps after which the (one-connection) pool lent a connection whose statements read
    no rows (left in pipeline mode with results unread)."""
    broken = []
    for n in range(steps):
        task = asyncio.ensure_future(call(n))
        for _ in range(n):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with pool.connection() as conn, conn.cursor() as cur:
            await cur.execute("SELECT 1")
            if cur.description is None:
                broken.append(n)
    return broken


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read and drop everything until the peer closes."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(CHUNK):
            pass


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


class _Listener:
    """A TCP listener on 127.0.0.1 (random port) that tracks its connections."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        # Each connection's streams: closing them ends its handler (the reads see
        # the end of stream), where cancelling the handler would log an error.
        self._conns: dict[asyncio.Task[None], list[asyncio.StreamWriter]] = {}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = [writer]
        try:
            await self._handle(reader, writer)
        finally:
            for w in self._conns.pop(task, [writer]):
                _close(w)

    def _hang_up(self, tasks: Iterable[asyncio.Task[None]]) -> None:
        for task in tasks:
            for writer in self._conns.get(task, []):
                _close(writer)

    async def start(self) -> None:
        """Listen on a random port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._conns)
        self._hang_up(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> _Listener:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class HungServer(_Listener):
    """Accepts connections, keeps them open, never writes a byte."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _discard(reader)

    async def __aenter__(self) -> HungServer:
        await self.start()
        return self


class BlackHoleProxy(_Listener):
    """Forwards to host:port; `black_hole()` silences it, `refuse()` takes it down."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.target = (host, port)
        self.mode = "forward"
        # Connections that lost bytes to the black hole: their protocol state is
        # gone, so `forward()` closes them instead of resuming them.
        self._silenced: set[asyncio.Task[None]] = set()

    def black_hole(self) -> None:
        """Stop forwarding: existing and new connections stay open and hear nothing."""
        self.mode = "black_hole"
        self._silenced |= set(self._conns)

    def refuse(self) -> None:
        """Act as a server that is down: close every connection, new ones at once."""
        self.mode = "refuse"
        self._hang_up(list(self._conns))

    def forward(self) -> None:
        """Forward again: connections held by the black hole are closed, new ones pass."""
        self.mode = "forward"
        self._hang_up(self._silenced)
        self._silenced.clear()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(CHUNK):
                if self.mode != "forward":
                    continue
                writer.write(data)
                await writer.drain()
        # One side closed: close the other, so the peer sees it too.
        _close(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.mode == "refuse":
            return
        if self.mode == "black_hole":
            self._silenced.add(task)
            await _discard(reader)
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._conns[task].append(up_writer)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def __aenter__(self) -> BlackHoleProxy:
        await self.start()
        return self


_SSL_REQUEST, _GSSENC_REQUEST, _CANCEL_REQUEST = 80877103, 80877104, 80877102


class _Trips:
    """One proxied PostgreSQL connection as the protocol sees it: the statements its
    client prepared, the trips (each ended by a Sync, or a simple Query) it sent and
    the server answered (each answer ends with ReadyForQuery), and the trip whose
    answer is to be lost (`doomed`: its number)."""

    def __init__(self) -> None:
        self.client = b""
        self.server = b""
        self.started = False  # the StartupMessage went: messages are typed from then on
        self.raw_replies = 0  # one-byte answers owed to SSL/GSS requests
        self.plain = True  # False once TLS began: the bytes say nothing any more
        self.statements: dict[bytes, bytes] = {}
        self.sent = 1  # the startup is answered with a ReadyForQuery too
        self.answered = 0
        self.doomed: int | None = None
        self.refused = False  # the doomed trip's answer held an ErrorResponse

    def client_messages(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The whole messages `data` completes, as (type, body)."""
        if not self.plain:
            return []
        self.client += data
        messages = []
        while self.plain:
            if not self.started:
                if len(self.client) < 8:
                    break
                size = int.from_bytes(self.client[:4], "big")
                if len(self.client) < size:
                    break
                code = int.from_bytes(self.client[4:8], "big")
                self.client = self.client[size:]
                if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                    self.raw_replies += 1
                elif code != _CANCEL_REQUEST:
                    self.started = True
                continue
            if len(self.client) < 5:
                break
            size = int.from_bytes(self.client[1:5], "big")
            if len(self.client) < size + 1:
                break
            messages.append((self.client[:1], self.client[5 : size + 1]))
            self.client = self.client[size + 1 :]
        return messages

    def server_messages(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The whole messages `data` completes, as (type, whole message bytes)."""
        self.server += data
        messages = []
        while self.plain and self.raw_replies and self.server:
            self.raw_replies -= 1
            reply, self.server = self.server[:1], self.server[1:]
            if reply in (b"S", b"G"):  # encrypted from here on: passed through unread
                self.plain = False
                rest, self.server = self.server, b""
                return [(b"", reply + rest)]
            messages.append((b"", reply))
        while self.plain and len(self.server) >= 5:
            size = int.from_bytes(self.server[1:5], "big")
            if len(self.server) < size + 1:
                break
            messages.append((self.server[:1], self.server[: size + 1]))
            self.server = self.server[size + 1 :]
        if not self.plain and self.server:
            rest, self.server = self.server, b""
            messages.append((b"", rest))
        return messages


class ReplyLosingProxy(BlackHoleProxy):
    """A BlackHoleProxy that loses the answer to a chosen statement: see `lose_reply`."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._losing: list[tuple[bytes, asyncio.Event]] = []
        self._lost_events: dict[int, asyncio.Event] = {}  # of each doomed connection's trips
        self.lost: list[bool] = []  # of each answer lost: whether its trip committed

    def lose_reply(self, text: bytes) -> asyncio.Event:
        """Lose the answer to the next trip that runs a statement whose text holds
        `text` (sent in it, or prepared earlier on its connection): the server runs
        the trip to its end (its Sync commits an implicit transaction; so does a COMMIT
        in it), and once its ReadyForQuery says so, the connection is cut with none of
        the answer forwarded. The event is set when it has been; `lost` says of each
        answer lost whether its trip committed (ended idle, with no error)."""
        lost = asyncio.Event()
        self._losing.append((text, lost))
        return lost

    def _observe(self, trips: _Trips, data: bytes) -> None:
        """Follow the client's messages: its statements, its trips, the one to doom."""
        for kind, body in trips.client_messages(data):
            statement = b""  # the text a message runs (a Parse runs nothing)
            if kind == b"P":
                name, _, rest = body.partition(b"\0")
                trips.statements[name] = rest.partition(b"\0")[0]
            elif kind == b"B":
                name = body.partition(b"\0")[2].partition(b"\0")[0]
                statement = trips.statements.get(name, b"")
            elif kind == b"Q":
                statement = body
            if kind in (b"S", b"Q"):
                trips.sent += 1
            if statement and trips.doomed is None:
                for i, (text, lost) in enumerate(self._losing):
                    if text in statement:
                        trips.doomed = trips.sent + (kind != b"Q")
                        del self._losing[i]
                        self._lost_events[id(trips)] = lost
                        break

    async def _pump_up(
        self, trips: _Trips, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(CHUNK):
                if self.mode != "forward":
                    continue
                self._observe(trips, data)  # before the server can have it
                writer.write(data)
                await writer.drain()
        _close(writer)

    async def _pump_down(
        self,
        trips: _Trips,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(CHUNK):
                if self.mode != "forward":
                    continue
                for kind, message in trips.server_messages(data):
                    if trips.doomed is not None and trips.answered == trips.doomed - 1:
                        if kind == b"E":  # refused: nothing was committed to lose
                            trips.refused = True
                        if kind == b"Z":  # run, and committed: the answer is lost
                            # Idle (I) after a trip with no error: it committed.
                            self.lost.append(message[-1:] == b"I" and not trips.refused)
                            _close(writer)
                            _close(upstream)
                            self._lost_events.pop(id(trips)).set()
                            return
                        continue
                    if kind == b"Z":
                        trips.answered += 1
                    writer.write(message)
                await writer.drain()
        _close(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.mode != "forward":
            await super()._handle(reader, writer)
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._conns[task].append(up_writer)
        trips = _Trips()
        await asyncio.gather(
            self._pump_up(trips, reader, up_writer),
            self._pump_down(trips, up_reader, writer, up_writer),
        )

    async def __aenter__(self) -> ReplyLosingProxy:
        await self.start()
        return self
