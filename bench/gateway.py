"""What the GraphQL layer adds, side by side in one run.

    python bench/gateway.py [--samples 200]

1. One thread-history page (20 checkpoints, values included) through GraphQL
   over HTTP to a `code-hero serve` process, against the same page read from
   the manager directly (same PostgreSQL database, alternating samples): the
   median difference is what GraphQL adds (the target).

   The target's HTTP side is a minimal keep-alive HTTP/1.1 client on a raw
   asyncio stream (`RawClient`): the request's bytes are made once, and a
   sample is writing them, reading the status line, the headers and the
   Content-Length body, up to its last byte. So it measures the server's HTTP
   stack, Strawberry and our schema, plus one loopback round trip, and almost
   nothing of a client: decoding the JSON body (after the clock stops) is the
   client's (the manager-direct side decodes the checkpoints and renders their
   values, as the server does, but parses no JSON). A general client's
   own per-request CPU is not something the gateway adds: httpx spends about
   1.5 ms of it per request here, while the server spends 0.25-0.35 ms of CPU
   on a `{ __typename }` request.

   As information, beside it: the HTTP floor, `{ __typename }` over the same
   raw client (what any request costs, before a field is resolved), and what
   the page adds beyond it; the same page and floor over httpx (the line the
   target used to be); and the server process's CPU time per page and per
   floor request (less sensitive than wall time to a machine shared with
   others). Also as information: the same page executed by the schema in this
   process (`schema.execute`, no HTTP, a gateway of its own on the same
   database) against that gateway's manager reading the page, alternating
   samples: what GraphQL execution adds without any request floor. The
   resolvers' own reads are part of it: `thread(id:)` reads the thread record
   (its owner), one read more than the manager's, at the same time as the
   page.
2. The time from sending `startRun` to the first event received by a
   WebSocket subscriber (`threadEvents` on the run's thread, built-in graph).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gql, scratch_database, target
from scale import GRAPHS, Replica

from code_hero.checkpointing import (
    EnhancedCheckpointerManager,
    create_postgres_checkpointer,
)
from code_hero.gateway import Gateway
from code_hero.resolvers.context import Context
from code_hero.schema import build_schema
from code_hero.settings import settings_from_env

PAGE = """query($t: ID!) { thread(id: $t) { checkpoints(first: 20) {
  edges { cursor node { id step source next values metadata } }
  pageInfo { hasNextPage endCursor } } } }"""
START = "mutation($input: StartRunInput!) { startRun(input: $input) { id threadId } }"
FOLLOW = "subscription($t: ID!) { threadEvents(threadId: $t) { seq __typename } }"


FLOOR = "{ __typename }"


def cpu_ms(pid: int) -> float | None:
    """The process's CPU time so far (user + system), from /proc; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


class RawClient:
    """A minimal keep-alive HTTP/1.1 client on one asyncio stream, for requests made once
    and sent many times: no per-request work but writing the bytes and reading the answer.

    It expects what uvicorn sends a GraphQL POST: a status line, headers with a
    Content-Length, and that many bytes of body on the same connection.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawClient:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()

    def request(self, query: str, **variables: Any) -> bytes:
        """The bytes of a GraphQL POST to /graphql."""
        body = json.dumps({"query": query, "variables": variables}).encode()
        head = (
            f"POST /graphql HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def send(self, request: bytes) -> bytes:
        """The body of the answer to `request`; RuntimeError unless it is a 200.

        A connection the server closed while it sat idle (its keep-alive timeout:
        75 s for `code-hero serve`, 5 s for uvicorn's default) is opened anew first,
        as httpx would."""
        assert self._reader is not None and self._writer is not None
        if self._reader.at_eof() or self._writer.is_closing():
            await self.__aexit__()
            await self.__aenter__()
            assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        status = await self._reader.readline()
        length = None
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if status.split(b" ", 2)[1:2] != [b"200"] or length is None:
            raise RuntimeError(f"unexpected answer: {status!r}")
        return await self._reader.readexactly(length)


def raw_data(body: bytes) -> dict[str, Any]:
    """The data of a GraphQL answer's body; RuntimeError when it has errors."""
    answer = json.loads(body)
    if "errors" in answer:
        raise RuntimeError(answer["errors"])
    data: dict[str, Any] = answer["data"]
    return data


@dataclass
class PageTimes:
    """Medians (ms) of one run of `page_overhead`; CPU per request when /proc has it."""

    raw: float  # the page over RawClient
    direct: float
    raw_floor: float
    http: float  # the page over httpx
    floor: float
    page_cpu: float | None
    floor_cpu: float | None
    thread: str

    @property
    def added(self) -> float:
        return self.raw - self.direct


async def server_cpu(
    pid: int, requests: int, send: Callable[[], Awaitable[object]]
) -> float | None:
    """The server's CPU time per request over `requests` sequential requests."""
    before = cpu_ms(pid)
    for _ in range(requests):
        await send()
    after = cpu_ms(pid)
    return None if before is None or after is None else (after - before) / requests


async def page_overhead(replica: Replica, url: str, samples: int) -> PageTimes:
    async with (
        httpx.AsyncClient(base_url=replica.http, timeout=60) as client,
        RawClient("127.0.0.1", replica.port) as raw,
    ):
        thread = None
        for _ in range(5):  # 5 runs of the small graph: about 30 root checkpoints
            run = await gql(
                client,
                START,
                input={"graph": "small", "threadId": thread, "input": {"steps": []}, "wait": True},
            )
            thread = run["startRun"]["threadId"]
        assert thread is not None
        page_request, floor_request = raw.request(PAGE, t=thread), raw.request(FLOOR)
        times: dict[str, list[float]] = {
            k: [] for k in ("raw", "direct", "raw_floor", "http", "floor")
        }
        async with EnhancedCheckpointerManager(create_postgres_checkpointer(url)) as manager:
            for _ in range(samples):
                start = time.perf_counter()
                body = await raw.send(page_request)
                times["raw"].append((time.perf_counter() - start) * 1000)
                assert len(raw_data(body)["thread"]["checkpoints"]["edges"]) == 20
                start = time.perf_counter()
                page = await manager.list_checkpoints(thread, first=20)
                for view in page.items:  # rendered when asked for, as the GraphQL page does
                    assert isinstance(view.values, dict)
                times["direct"].append((time.perf_counter() - start) * 1000)
                assert len(page.items) == 20
                start = time.perf_counter()
                body = await raw.send(floor_request)
                times["raw_floor"].append((time.perf_counter() - start) * 1000)
                assert raw_data(body) == {"__typename": "Query"}
                start = time.perf_counter()
                data = await gql(client, PAGE, t=thread)
                times["http"].append((time.perf_counter() - start) * 1000)
                assert len(data["thread"]["checkpoints"]["edges"]) == 20
                start = time.perf_counter()
                await gql(client, FLOOR)
                times["floor"].append((time.perf_counter() - start) * 1000)
        pid = replica.process.pid
        page_cpu = await server_cpu(pid, samples, lambda: raw.send(page_request))
        floor_cpu = await server_cpu(pid, samples, lambda: raw.send(floor_request))
    medians = {k: statistics.median(v) for k, v in times.items()}
    return PageTimes(**medians, page_cpu=page_cpu, floor_cpu=floor_cpu, thread=thread)


async def execution_overhead(url: str, thread: str, samples: int) -> tuple[float, float]:
    """Medians (ms) of the page executed by the schema in this process (no HTTP) and of
    the same page read from the manager of that gateway, alternating samples."""
    settings = settings_from_env({"CODE_HERO_FALLBACK_PATH": "memory"}, database_url=url)
    schema = build_schema(settings.limits)
    executed, direct = [], []
    async with Gateway(settings.gateway) as gateway:
        context = Context(gateway=gateway, limits=settings.limits)
        for i in range(samples + 5):  # the first five warm up
            start = time.perf_counter()
            result = await schema.execute(
                PAGE, variable_values={"t": thread}, context_value=context
            )
            took = (time.perf_counter() - start) * 1000
            assert not result.errors and result.data is not None, result.errors
            assert len(result.data["thread"]["checkpoints"]["edges"]) == 20
            start = time.perf_counter()
            page = await gateway.manager.list_checkpoints(thread, first=20)
            for view in page.items:  # rendered when asked for, as the GraphQL page does
                assert isinstance(view.values, dict)
            if i >= 5:
                executed.append(took)
                direct.append((time.perf_counter() - start) * 1000)
    return statistics.median(executed), statistics.median(direct)


async def wait_finished(client: httpx.AsyncClient, run_id: str) -> None:
    """Poll until the run has ended (its events drained before the next sample)."""
    query = "query($id: ID!) { run(id: $id) { status } }"
    for _ in range(3000):
        data = await gql(client, query, id=run_id)
        if data["run"]["status"] not in ("PENDING", "RUNNING"):
            return
        await asyncio.sleep(0.01)


async def first_event_latency(replica: Replica, samples: int) -> float:
    latencies = []
    async with httpx.AsyncClient(base_url=replica.http, timeout=60) as client:
        first = await gql(client, START, input={"message": "hello", "wait": True})
        thread = first["startRun"]["threadId"]
        protocols: Any = ["graphql-transport-ws"]
        async with connect(replica.ws, subprotocols=protocols) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            await ws.recv()
            await ws.send(
                json.dumps(
                    {
                        "id": "t",
                        "type": "subscribe",
                        "payload": {"query": FOLLOW, "variables": {"t": thread}},
                    }
                )
            )
            await asyncio.sleep(0.2)
            for _ in range(samples):
                start = time.perf_counter()
                run = await gql(
                    client,
                    START,
                    input={"threadId": thread, "message": "Help me build a FastAPI application"},
                )
                message = json.loads(await ws.recv())
                latencies.append((time.perf_counter() - start) * 1000)
                assert message["type"] == "next"
                await wait_finished(client, run["startRun"]["id"])
                while True:
                    try:
                        await asyncio.wait_for(ws.recv(), 0.2)
                    except TimeoutError:
                        break
    return statistics.median(latencies)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database() as url:
            replica = Replica(url, Path(tmp), CODE_HERO_GRAPHS=GRAPHS)  # "small" too
            try:
                await replica.ready()
                times = await page_overhead(replica, url, args.samples)
                added = times.added
                print(
                    f"history page of 20 checkpoints (median ms): GraphQL over HTTP "
                    f"{times.raw:.2f}, manager directly {times.direct:.2f}, "
                    f"GraphQL adds {added:.2f}"
                )
                print(
                    f"  of which: the HTTP floor ({FLOOR} over the same raw client) "
                    f"{times.raw_floor:.2f}, the page beyond the floor "
                    f"{times.raw - times.raw_floor - times.direct:.2f}"
                )
                print(
                    f"  over httpx instead (its own CPU per request included): page "
                    f"{times.http:.2f}, adds {times.http - times.direct:.2f}; floor "
                    f"{times.floor:.2f}, the page beyond it "
                    f"{times.http - times.floor - times.direct:.2f}"
                )
                if times.page_cpu is not None and times.floor_cpu is not None:
                    print(
                        f"  server CPU per request (ms): page {times.page_cpu:.2f}, "
                        f"floor {times.floor_cpu:.2f}"
                    )
                executed, read = await execution_overhead(url, times.thread, args.samples)
                print(
                    f"  in this process, no HTTP: schema.execute {executed:.2f}, "
                    f"the manager's read {read:.2f}, GraphQL execution adds "
                    f"{executed - read:.2f}"
                )
                first = await first_event_latency(replica, max(args.samples // 10, 10))
                print(f"startRun -> first event at a WebSocket subscriber: median {first:.2f} ms")
            finally:
                replica.stop()
    print()
    print(target("graphql_page_overhead", added, "< 1 ms", added < 1, " ms"))
    beyond = times.raw - times.raw_floor - times.direct
    print(f"(informative) GraphQL beyond the HTTP floor: {beyond:.2f} ms", end="")
    print(f" (floor {times.raw_floor:.2f} ms)")
    print(f"(informative) GraphQL adds over httpx: {times.http - times.direct:.2f} ms")
    print(f"(informative) GraphQL execution over the manager in-process: {executed - read:.2f} ms")
    print(target("start_run_to_first_event", first, "< 20 ms", first < 20, " ms"))


if __name__ == "__main__":
    asyncio.run(main())
