"""`code-hero serve`'s HTTP protocol: a response's head and body in one write.

Tiny ASGI apps served by uvicorn with OneWriteProtocol on a real loopback socket,
under asyncio and under uvloop (what `serve` runs on). The socket's transport
records each write the protocol makes: one write, one send() syscall.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
import uvloop

from code_hero.cli.http_protocol import OneWriteProtocol

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\n"


class Recording:
    """A socket's transport that remembers each write made to it (writelines: one)."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        chunks = [bytes(chunk) for chunk in chunks]
        self._writes.append(b"".join(chunks))
        self._transport.writelines(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a scenario on a fresh event loop of each kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(scenario: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            loop_runner.run(scenario)

    return runner


@asynccontextmanager
async def serving(app: App) -> AsyncIterator[tuple[int, list[bytes]]]:
    """Serve `app` with OneWriteProtocol; its port and the writes made to its sockets."""
    writes: list[bytes] = []

    class Recorded(OneWriteProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(Recording(transport, writes))  # type: ignore[arg-type]

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=Recorded,
        lifespan="off",
        log_config=None,  # its records reach caplog
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield server.servers[0].sockets[0].getsockname()[1], writes
    finally:
        server.should_exit = True
        await task


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


def request(path: str = "/", method: str = "GET", *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: test", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One Content-Length response: its head and its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


async def echo_path(scope: Scope, receive: Receive, send: Send) -> None:
    """A small response whose body follows its head at once, as every JSON page's."""
    body = scope["path"].encode()
    extra = [(b"connection", b"close")] if scope["path"] == "/close" else []
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


def test_a_small_response_is_one_write(run: Runner) -> None:
    async def scenario() -> None:
        async with serving(echo_path) as (port, writes):
            reader, writer = await connect(port)
            writer.write(request("/one"))
            head, body = await response(reader)
            writer.close()
        assert head.startswith(OK) and body == b"/one"
        assert writes == [head + body]  # uvicorn's own protocol: [head, body]

    run(scenario())


def test_pipelined_requests_are_answered_in_order_one_write_each(
    run: Runner,
) -> None:
    async def scenario() -> None:
        async with serving(echo_path) as (port, writes):
            reader, writer = await connect(port)
            writer.write(request("/a") + request("/b", "HEAD") + request("/c"))
            answers = [await response(reader), await reader.readuntil(b"\r\n\r\n")]
            answers.append(await response(reader))
            writer.close()
        assert [answers[0][1], answers[2][1]] == [b"/a", b"/c"]
        assert b"content-length: 2" in answers[1]  # HEAD: the head alone
        assert writes == [b"".join(answers[0]), answers[1], b"".join(answers[2])]

    run(scenario())


@pytest.mark.parametrize("asked_by", ["app", "client"])
def test_connection_close_delivers_the_whole_response_then_closes(
    run: Runner, asked_by: str
) -> None:
    async def scenario() -> None:
        async with serving(echo_path) as (port, writes):
            reader, writer = await connect(port)
            if asked_by == "app":
                writer.write(request("/close"))
            else:
                writer.write(request("/bye", "GET", "connection: close"))
            received = await reader.read()  # up to the server's close
            writer.close()
        head, body = received.split(b"\r\n\r\n")
        assert b"connection: close" in head
        assert body == (b"/close" if asked_by == "app" else b"/bye")
        assert writes == [received]

    run(scenario())


def test_a_streamed_response_goes_out_head_first_then_chunk_by_chunk(
    run: Runner,
) -> None:
    async def scenario() -> None:
        steps = [asyncio.Event(), asyncio.Event()]

        async def stream(scope: Scope, receive: Receive, send: Send) -> None:
            # No Content-Length: uvicorn frames the body in chunks.
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await steps[0].wait()
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await steps[1].wait()
            await send({"type": "http.response.body", "body": b"last"})

        async with serving(stream) as (port, writes):
            reader, writer = await connect(port)
            writer.write(request())
            # Each part arrives while the app waits to send the next: nothing is held
            # for what follows.
            # (A bound on the wait only so that a held part fails the test, not hangs it.)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            steps[0].set()
            first = await asyncio.wait_for(reader.readuntil(b"first\r\n"), 10)
            steps[1].set()
            last = await reader.readuntil(b"0\r\n\r\n")
            writer.close()
        assert head.startswith(OK) and b"transfer-encoding: chunked" in head
        assert (first, last) == (b"5\r\nfirst\r\n", b"4\r\nlast\r\n0\r\n\r\n")
        assert writes == [head, first, last]

    run(scenario())


def test_an_app_failing_after_the_head_sends_the_head_then_closes(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"9")]}
        )
        raise RuntimeError("boom")

    async def scenario() -> None:
        async with serving(broken) as (port, writes):
            reader, writer = await connect(port)
            writer.write(request())
            received = await reader.read()  # the held head went out before the close
            writer.close()
        assert received.startswith(OK) and received.endswith(b"content-length: 9\r\n\r\n")
        assert writes == [received]

    run(scenario())
    assert "Exception in ASGI application" in caplog.text


def test_a_client_gone_before_the_body_costs_the_server_nothing(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        gone = asyncio.Event()
        answered = asyncio.Event()

        async def late(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["path"] == "/late":
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-length", b"4")],
                    }
                )
                assert (await receive())["type"] == "http.request"
                assert (await receive())["type"] == "http.disconnect"
                gone.set()
                await send({"type": "http.response.body", "body": b"late"})  # dropped
                answered.set()
            else:
                await echo_path(scope, receive, send)

        async with serving(late) as (port, _):
            reader, writer = await connect(port)
            writer.write(request("/late"))
            await reader.readuntil(b"\r\n\r\n")
            writer.close()
            await gone.wait()
            await answered.wait()
            reader, writer = await connect(port)  # the server serves on
            writer.write(request("/next"))
            assert (await response(reader))[1] == b"/next"
            writer.close()

    run(scenario())
    assert "Exception" not in caplog.text


def test_a_finished_requests_cycle_goes_by_reference_count(run: Runner) -> None:
    """No reference cycle per request: with the collector off, a finished request's
    cycle (its scope, headers, events) is freed when the next replaces it, as with
    uvicorn's own protocol, not left for the collector (serve raises its threshold)."""

    async def scenario() -> None:
        cycles: list[weakref.ref[Any]] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            cycles.append(weakref.ref(send.__self__))  # type: ignore[attr-defined]
            await echo_path(scope, receive, send)

        async with serving(app) as (port, _):
            reader, writer = await connect(port)
            gc.collect()
            gc.disable()
            try:
                for path in ("/a", "/b", "/c"):
                    writer.write(request(path))
                    await response(reader)
                await asyncio.sleep(0)
                alive = [ref() is not None for ref in cycles]
            finally:
                gc.enable()
            writer.close()
        assert alive == [False, False, True]  # the last is still the connection's

    run(scenario())
