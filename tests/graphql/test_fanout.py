"""Shared `runEvents` streams: one producer for many subscribers, on both backends
and both WebSocket protocols, with every subscriber's own checks and start."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from code_hero.auth import ANONYMOUS
from code_hero.fanout import Entry, Fanout, Request, shareable
from code_hero.resolvers.context import Context
from code_hero.resolvers.sharing import Gate
from code_hero.schema import build_schema
from tests.auth.issuer import Issuer
from tests.graphql.clients import LegacyWS, TransportWS, data, eventually, gql
from tests.graphql.conftest import Server, checkpointer_for
from tests.graphql.test_auth import ALICE_KEY, BOB_KEY, client, secured

EVENTS = """
subscription($run: ID!, $after: Int, $types: [RunEventType!]) {
  runEvents(runId: $run, afterSeq: $after, types: $types) {
    __typename seq runId ... on RunStatusChanged { status } ... on NodeUpdate { node }
  }
}
"""
SLOW = {"graph": "slow", "message": "go", "config": {"delay": 0.3}}
START = "mutation($input: StartRunInput!) { startRun(input: $input) { id } }"
RECORDED = "query($id: ID!) { run(id: $id) { events(first: 1000) { seq __typename } } }"


async def start(http: Any, **fields: Any) -> str:
    run_id: str = data(await gql(http, START, {"input": {**SLOW, **fields}}))["startRun"]["id"]
    return run_id


def sizes(server: Server) -> dict[str, int]:
    fanout: Fanout = server.app.state.fanout
    return fanout.internal_sizes()


class Subscriber:
    """One socket of either protocol with one runEvents subscription."""

    def __init__(self, socket: TransportWS | LegacyWS) -> None:
        self.socket = socket

    async def subscribe(self, variables: dict[str, Any]) -> None:
        if isinstance(self.socket, TransportWS):
            await self.socket.subscribe("s", EVENTS, variables)
        else:
            await self.socket.start("s", EVENTS, variables)

    async def collect(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        payloads, end = await self.socket.collect("s")
        return payloads, end


@asynccontextmanager
async def subscribers(
    server: Server, count: int, headers: dict[str, str] | None = None
) -> AsyncIterator[list[Subscriber]]:
    async with AsyncExitStack() as stack:
        subs = []
        for i in range(count):
            kind = TransportWS if i % 2 == 0 else LegacyWS
            subs.append(
                Subscriber(
                    await stack.enter_async_context(kind.connect(server.ws_url, headers=headers))
                )
            )
        yield subs


def events(payloads: list[dict[str, Any]]) -> list[tuple[int, str]]:
    for payload in payloads:
        assert "errors" not in payload, payload
    return [(p["data"]["runEvents"]["seq"], p["data"]["runEvents"]["__typename"]) for p in payloads]


async def recorded(server: Server, run_id: str) -> list[tuple[int, str]]:
    run = data(await gql(server.http, RECORDED, {"id": run_id}))["run"]
    return [(e["seq"], e["__typename"]) for e in run["events"]]


def test_what_is_shared() -> None:
    assert shareable(EVENTS, None)
    assert shareable("subscription S { e: runEvents(runId: 1) { seq } }", "S")
    assert not shareable("subscription { runStream(input: {}) { seq } }", None)
    assert not shareable("subscription { runEvents(runId: 1) @skip(if: false) { seq } }", None)
    assert not shareable("query { runs { edges { node { id } } } }", None)
    assert not shareable("subscription {", None)


async def test_many_subscribers_share_one_stream(server: Server) -> None:
    run_id = await start(server.http)
    async with subscribers(server, 6) as subs:
        for sub in subs:
            await sub.subscribe({"run": run_id})
        await eventually(lambda: sizes(server) == {"fanout.streams": 1, "fanout.members": 6})
        results = await asyncio.gather(*(sub.collect() for sub in subs))
    stored = await recorded(server, run_id)
    assert stored[-1] == (len(stored), "RunStatusChanged")
    for payloads, end in results:
        assert end is not None and end["type"] == "complete"
        assert events(payloads) == stored  # in order, every one, once
    # The cost of each subscription is still reported with every payload.
    assert all(p["extensions"]["cost"] > 0 for p in results[0][0])
    await eventually(lambda: sizes(server) == {"fanout.streams": 0, "fanout.members": 0})


async def test_after_seq_joins_the_share_without_gap_or_duplicate(server: Server) -> None:
    server.app.state.fanout.window = 2  # late joiners start before the window
    run_id = await start(server.http)
    async with subscribers(server, 4) as subs:
        await subs[0].subscribe({"run": run_id})
        assert isinstance(subs[0].socket, TransportWS)
        first = await subs[0].socket.collect("s", limit=4)
        assert [e[0] for e in events(first[0])] == [1, 2, 3, 4]
        await subs[1].subscribe({"run": run_id, "after": 3})  # within the window
        await subs[2].subscribe({"run": run_id, "after": 0})  # before it: from the log
        await subs[3].subscribe({"run": run_id, "after": 1})
        await eventually(lambda: sizes(server)["fanout.members"] == 4)
        assert sizes(server)["fanout.streams"] == 1
        rest = await subs[0].collect()
        results = await asyncio.gather(*(sub.collect() for sub in subs[1:]))
    stored = await recorded(server, run_id)
    assert events(first[0] + rest[0]) == stored
    for (payloads, end), after in zip(results, (3, 0, 1), strict=True):
        assert end is not None and end["type"] == "complete"
        assert events(payloads) == [e for e in stored if e[0] > after]


async def test_different_types_do_not_share(server: Server) -> None:
    run_id = await start(server.http)
    async with subscribers(server, 3) as subs:
        await subs[0].subscribe({"run": run_id})
        await subs[1].subscribe({"run": run_id, "types": ["RUN_STATUS_CHANGED"]})
        await subs[2].subscribe({"run": run_id, "types": ["NODE_UPDATE"]})
        await eventually(lambda: sizes(server) == {"fanout.streams": 3, "fanout.members": 3})
        (every, _), (statuses, _), (nodes, _) = await asyncio.gather(
            *(sub.collect() for sub in subs)
        )
    stored = await recorded(server, run_id)
    assert events(every) == stored
    assert events(statuses) == [e for e in stored if e[1] == "RunStatusChanged"]
    assert events(nodes) == [e for e in stored if e[1] == "NodeUpdate"]
    assert [p["data"]["runEvents"]["node"] for p in nodes] == ["first", "second", "third"]


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


async def test_another_users_subscription_is_refused_while_others_share(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, idp: Issuer
) -> None:
    as_alice = {"authorization": f"Bearer {ALICE_KEY}"}
    as_bob = {"authorization": f"Bearer {BOB_KEY}"}
    async with secured(checkpointer_for(backend, request, tmp_path), idp) as server:
        async with client(server, ALICE_KEY) as http:
            run_id = await start(http)
        async with (
            subscribers(server, 2, headers=as_alice) as alice,
            subscribers(server, 2, headers=as_bob) as bob,
        ):
            for sub in alice:
                await sub.subscribe({"run": run_id})
            await eventually(lambda: sizes(server) == {"fanout.streams": 1, "fanout.members": 2})
            for sub in bob:  # the same document and variables: refused all the same
                await sub.subscribe({"run": run_id})
            (t_payloads, t_end), (l_payloads, l_end) = await asyncio.gather(
                *(sub.collect() for sub in bob)
            )
            assert t_payloads == l_payloads == []
            assert t_end is not None and t_end["type"] == "error"
            assert t_end["payload"][0]["extensions"]["code"] == "NOT_FOUND"
            assert (
                l_end["type"] == "error" and l_end["payload"]["extensions"]["code"] == "NOT_FOUND"
            )
            results = await asyncio.gather(*(sub.collect() for sub in alice))
        for payloads, end in results:
            assert end is not None and end["type"] == "complete"
            assert events(payloads)[-1][1] == "RunStatusChanged"
            assert [e[0] for e in events(payloads)] == list(range(1, len(payloads) + 1))


async def test_a_slow_subscriber_holds_up_no_one(server: Server) -> None:
    fanout = Fanout(window=2)
    run_id = await start(server.http)
    request = Request(
        build_schema(),
        EVENTS,
        {"run": run_id, "after": 0},
        None,
        Context(gateway=server.gateway),
        lambda value: json.dumps(value),
    )

    def member() -> AsyncIterator[Entry]:
        return fanout.follow(request, Gate(run_id, 0, "after", ANONYMOUS))

    slow, fast = member(), member()
    first = await anext(slow)  # then it reads nothing while the run goes on
    fast_entries = [entry async for entry in fast]  # to the end, not waiting for the slow one
    slow_entries = [first, *[entry async for entry in slow]]  # caught up from the log
    stored = await recorded(server, run_id)
    for entries in (fast_entries, slow_entries):
        got = [json.loads(e.payload or "")["data"]["runEvents"] for e in entries]
        assert [(e["seq"], e["__typename"]) for e in got] == stored
    assert fanout.internal_sizes() == {"fanout.streams": 0, "fanout.members": 0}
