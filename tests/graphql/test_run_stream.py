"""`runStream` (start and follow in one operation) and the `types` filter of
`runEvents`, over graphql-transport-ws, legacy graphql-ws and SSE, on both backends."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from code_hero.auth import AccessSettings, RateLimit
from code_hero.settings import Limits
from tests.auth.issuer import Issuer
from tests.graphql.clients import LegacyWS, TransportWS, codes, data, gql, sse
from tests.graphql.conftest import Server, Starter, checkpointer_for
from tests.graphql.test_auth import ALICE_KEY, BOB_KEY, client, secured

TRANSPORTS = ["graphql-transport-ws", "graphql-ws", "sse"]

STREAM = """
subscription($input: StartRunInput!, $types: [RunEventType!]) {
  runStream(input: $input, types: $types) {
    __typename seq runId threadId at
    ... on RunStatusChanged { status error }
    ... on MessageDelta { delta }
    ... on Interrupted { node value }
  }
}
"""

EVENTS = """
subscription($run: ID!, $after: Int, $types: [RunEventType!]) {
  runEvents(runId: $run, afterSeq: $after, types: $types) {
    __typename seq runId ... on RunStatusChanged { status } ... on MessageDelta { delta }
  }
}
"""

RECORDED = "query($id: ID!) { run(id: $id) { status events(first: 1000) { seq __typename } } }"
MESSAGE = {"message": "Help me build a FastAPI app"}
SLOW = {"graph": "slow", "message": "go", "config": {"delay": 0.1}}
# The `__typename` of each RunEventType.
TYPENAMES = {
    "RUN_STATUS_CHANGED": "RunStatusChanged",
    "MESSAGE_DELTA": "MessageDelta",
    "NODE_UPDATE": "NodeUpdate",
    "CHECKPOINT_SAVED": "CheckpointSaved",
}


@pytest.fixture
def pg_database(pg_migrated_database: str) -> str:
    """A database of the test's own with the gateway's tables made (its migrations are
    not what these tests are about)."""
    return pg_migrated_database


async def stream(
    server: Server,
    transport: str,
    query: str,
    variables: dict[str, Any],
    *,
    field: str = "runStream",
    headers: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """One subscription over `transport` to its end: (events, error codes)."""
    if transport == "sse":
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=20) as http:
            received = await sse(http, query, variables)
        assert received[-1] == ("complete", None), received
        payloads = [p for kind, p in received if kind == "next"]
        errors = [c for p in payloads for c in codes(p)]
        return [p["data"][field] for p in payloads if not codes(p)], errors
    if transport == "graphql-ws":
        async with LegacyWS.connect(server.ws_url, headers=headers) as legacy:
            await legacy.start("1", query, variables)
            payloads, end = await legacy.collect("1")
        if end["type"] == "error":
            return [], [end["payload"]["extensions"]["code"]]
    else:
        async with TransportWS.connect(server.ws_url, headers=headers) as ws:
            await ws.subscribe("1", query, variables)
            payloads, last = await ws.collect("1")
        assert last is not None
        if last["type"] == "error":
            return [], [e["extensions"]["code"] for e in last["payload"]]
    errors = [c for p in payloads for c in codes(p)]
    return [p["data"][field] for p in payloads if not codes(p)], errors


async def recorded(server: Server, run_id: str) -> list[tuple[int, str]]:
    run = data(await gql(server.http, RECORDED, {"id": run_id}))["run"]
    return [(e["seq"], e["__typename"]) for e in run["events"]]


async def run_count(server: Server) -> int:
    body = await gql(server.http, "{ runs(first: 30) { edges { node { id } } } }")
    return len(data(body)["runs"]["edges"])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stream_starts_and_follows_a_run(server: Server, transport: str) -> None:
    events, errors = await stream(server, transport, STREAM, {"input": MESSAGE})
    assert errors == []
    first, last = events[0], events[-1]
    assert first["seq"] == 1 and first["__typename"] == "RunStatusChanged"
    assert first["status"] == "PENDING" and first["runId"]  # the id to resume with
    assert last["__typename"] == "RunStatusChanged" and last["status"] == "SUCCESS"
    assert {e["runId"] for e in events} == {first["runId"]}
    assert len({e["threadId"] for e in events}) == 1
    # Every recorded event once, in order.
    assert [(e["seq"], e["__typename"]) for e in events] == await recorded(server, first["runId"])
    assert "FastAPI" in "".join(e["delta"] for e in events if e["__typename"] == "MessageDelta")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_types_keep_only_the_listed_events(server: Server, transport: str) -> None:
    chat = ["MESSAGE_DELTA", "RUN_STATUS_CHANGED"]
    events, errors = await stream(server, transport, STREAM, {"input": MESSAGE, "types": chat})
    assert errors == []
    run_id = events[0]["runId"]
    wanted = {TYPENAMES[t] for t in chat}
    everything = await recorded(server, run_id)
    assert {name for _, name in everything} - wanted  # the filter dropped something
    # The run-wide seqs of the listed types, none other, none missing.
    assert [(e["seq"], e["__typename"]) for e in events] == [
        (seq, name) for seq, name in everything if name in wanted
    ]
    assert events[0]["seq"] == 1 and events[-1]["status"] == "SUCCESS"

    # Without RUN_STATUS_CHANGED the end still completes the stream, delivering nothing more.
    deltas, errors = await stream(
        server, transport, STREAM, {"input": MESSAGE, "types": ["MESSAGE_DELTA"]}
    )
    assert errors == [] and deltas
    assert {e["__typename"] for e in deltas} == {"MessageDelta"}
    seqs = [e["seq"] for e in deltas]
    assert seqs == sorted(set(seqs)) and seqs[0] > 1

    # runEvents with types: the replay of a finished run, filtered in the log.
    replayed, errors = await stream(
        server,
        transport,
        EVENTS,
        {"run": run_id, "after": 2, "types": ["NODE_UPDATE", "CHECKPOINT_SAVED"]},
        field="runEvents",
    )
    assert errors == []
    assert [(e["seq"], e["__typename"]) for e in replayed] == [
        (seq, name)
        for seq, name in everything
        if seq > 2 and name in {"NodeUpdate", "CheckpointSaved"}
    ]


async def test_run_events_types_while_the_run_goes_on(server: Server) -> None:
    """A filtered follow from the middle of a live run: replay, seam and live part."""
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("all", STREAM, {"input": SLOW})
        head, _ = await ws.collect("all", limit=3)
        run_id = head[0]["data"]["runStream"]["runId"]
        types = ["NODE_UPDATE", "RUN_STATUS_CHANGED"]
        async with TransportWS.connect(server.ws_url) as other:  # collect skips other ids
            await other.subscribe("some", EVENTS, {"run": run_id, "after": 1, "types": types})
            some, end = await other.collect("some")
        assert end == {"id": "some", "type": "complete"}
        rest, end = await ws.collect("all")
        assert end == {"id": "all", "type": "complete"}
    everything = [
        (p["data"]["runStream"]["seq"], p["data"]["runStream"]["__typename"]) for p in head + rest
    ]
    assert everything == await recorded(server, run_id)
    got = [(p["data"]["runEvents"]["seq"], p["data"]["runEvents"]["__typename"]) for p in some]
    assert got == [
        (s, n) for s, n in everything if s > 1 and n in {"NodeUpdate", "RunStatusChanged"}
    ]
    assert [n for _, n in got].count("NodeUpdate") == 3  # the slow graph's three nodes


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_interrupted_graph_ends_the_stream(server: Server, transport: str) -> None:
    asking = {**MESSAGE, "config": {"require_approval": True}}
    events, errors = await stream(server, transport, STREAM, {"input": asking})
    assert errors == []
    assert events[-1]["__typename"] == "RunStatusChanged"
    assert events[-1]["status"] == "INTERRUPTED"
    interrupted = [e for e in events if e["__typename"] == "Interrupted"]
    assert interrupted and interrupted[0]["node"] == "SUPERVISOR"
    assert [(e["seq"], e["__typename"]) for e in events] == await recorded(
        server, events[0]["runId"]
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_refusals_come_before_the_run_starts(server: Server, transport: str) -> None:
    busy = data(
        await gql(
            server.http,
            "mutation($i: StartRunInput!) { startRun(input: $i) { id threadId } }",
            {"i": {**SLOW, "config": {"delay": 0.5}}},
        )
    )["startRun"]
    before = await run_count(server)
    refused = [
        ({"input": {**MESSAGE, "threadId": "no spaces"}}, "BAD_USER_INPUT"),
        ({"input": {**MESSAGE, "input": {"messages": []}}}, "BAD_USER_INPUT"),
        ({"input": {**MESSAGE, "config": {"recursion_limit": -1}}}, "BAD_USER_INPUT"),
        ({"input": {**MESSAGE, "graph": "no-such-graph"}}, "NOT_FOUND"),
        ({"input": {**MESSAGE, "threadId": busy["threadId"]}}, "CONFLICT"),
    ]
    start = "mutation($input: StartRunInput!) { startRun(input: $input) { id } }"
    for variables, code in refused:
        events, errors = await stream(server, transport, STREAM, variables)
        assert (events, errors) == ([], [code]), variables
        assert codes(await gql(server.http, start, variables)) == [code]  # as startRun
    # An empty `types` is refused too (leave it out for every type).
    events, errors = await stream(server, transport, STREAM, {"input": MESSAGE, "types": []})
    assert (events, errors) == ([], ["BAD_USER_INPUT"])
    assert await run_count(server) == before  # none of them started a run
    # Done with it: the server's stop need not wait out the rest of its steps.
    cancel = "mutation($id: ID!) { cancelRun(id: $id) { id } }"
    data(await gql(server.http, cancel, {"id": busy["id"]}))


@pytest.mark.parametrize("transport", ["graphql-transport-ws", "graphql-ws"])
async def test_a_dropped_client_resumes_with_run_events(server: Server, transport: str) -> None:
    head: list[dict[str, Any]] = []
    if transport == "graphql-ws":
        async with LegacyWS.connect(server.ws_url) as legacy:
            await legacy.start("1", STREAM, {"input": SLOW})
            while len(head) < 3:
                message = await legacy.receive()
                if message["type"] == "data":
                    head.append(message["payload"]["data"]["runStream"])
    else:
        async with TransportWS.connect(server.ws_url) as ws:
            await ws.subscribe("1", STREAM, {"input": SLOW})
            payloads, end = await ws.collect("1", limit=3)
            assert end is None
            head = [p["data"]["runStream"] for p in payloads]
    # The socket closed mid-run (no complete): the run goes on; resume after the last seq.
    run_id, last = head[0]["runId"], head[-1]["seq"]
    tail, errors = await stream(
        server, transport, EVENTS, {"run": run_id, "after": last}, field="runEvents"
    )
    assert errors == [] and tail[-1]["status"] == "SUCCESS"
    seqs = [e["seq"] for e in head + tail]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate
    assert seqs == [seq for seq, _ in await recorded(server, run_id)]


async def test_stream_is_refused_over_get(server: Server) -> None:
    before = await run_count(server)
    params = {"query": STREAM, "variables": json.dumps({"input": MESSAGE})}
    async with server.http.stream(
        "GET", "/graphql", params=params, headers={"accept": "text/event-stream"}
    ) as response:
        text = (await response.aread()).decode()
    assert response.status_code == 200 and '"code":"BAD_USER_INPUT"' in text, text
    assert "POST" in text  # it says what to do instead
    assert await run_count(server) == before


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_subscription_over_plain_http_says_which_transports_stream(
    server: Server, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = await run_count(server)
    for query, variables in ((STREAM, {"input": MESSAGE}), (EVENTS, {"run": "r"})):
        if method == "POST":
            response = await server.http.post(
                "/graphql", json={"query": query, "variables": variables}
            )
        else:
            params = {"query": query, "variables": json.dumps(variables)}
            response = await server.http.get("/graphql", params=params)
        assert response.status_code == 400, response.text
        (error,) = response.json()["errors"]
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert "graphql-transport-ws" in error["message"]
        assert "text/event-stream" in error["message"]
    assert await run_count(server) == before
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_stream_is_priced_and_refused_before_it_starts(start: Starter) -> None:
    query = "subscription($input: StartRunInput!) { runStream(input: $input) { seq runId } }"
    async with start(Limits(max_cost=99)) as server:
        events, errors = await stream(server, "graphql-transport-ws", query, {"input": MESSAGE})
        assert (events, errors) == ([], ["QUERY_TOO_COMPLEX"])  # a page of 100 events
        assert await run_count(server) == 0
    async with start(Limits(max_cost=100)) as server:
        events, errors = await stream(server, "graphql-transport-ws", query, {"input": MESSAGE})
        assert errors == [] and events[0]["seq"] == 1


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


async def test_owners_and_the_mutation_rate_limit(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, idp: Issuer
) -> None:
    access = AccessSettings(rate_limit=RateLimit(3, 60.0))
    fast = {"graph": "slow", "message": "hi", "config": {"delay": 0}}
    async with (
        secured(checkpointer_for(backend, request, tmp_path), idp, access=access) as server,
        client(server, ALICE_KEY) as alice,
    ):
        as_alice = {"authorization": f"Bearer {ALICE_KEY}"}
        as_bob = {"authorization": f"Bearer {BOB_KEY}"}
        events, errors = await stream(
            server, "graphql-transport-ws", STREAM, {"input": fast}, headers=as_alice
        )
        assert errors == [] and events[-1]["status"] == "SUCCESS"
        thread = events[0]["threadId"]
        owner = data(
            await gql(alice, "query($t: ID!) { thread(id: $t) { userId } }", {"t": thread})
        )
        assert owner["thread"]["userId"] == "alice"
        # Bob can neither stream on Alice's thread nor follow her run: NOT_FOUND, no run.
        for transport in ("graphql-transport-ws", "graphql-ws"):
            bobs, errors = await stream(
                server,
                transport,
                STREAM,
                {"input": {**fast, "threadId": thread}},
                headers=as_bob,
            )
            assert (bobs, errors) == ([], ["NOT_FOUND"]), transport
        followed, errors = await stream(
            server,
            "graphql-transport-ws",
            EVENTS,
            {"run": events[0]["runId"]},
            field="runEvents",
            headers=as_bob,
        )
        assert (followed, errors) == ([], ["NOT_FOUND"])
        runs = data(await gql(alice, "{ runs { edges { node { id } } } }"))["runs"]["edges"]
        assert len(runs) == 1
        # A stream counts as a mutation: Alice's 3 are one stream and two startRuns.
        start = "mutation($i: StartRunInput!) { startRun(input: $i) { id } }"
        for _ in range(2):
            data(await gql(alice, start, {"i": fast}))
        events, errors = await stream(
            server, "graphql-transport-ws", STREAM, {"input": fast}, headers=as_alice
        )
        assert (events, errors) == ([], ["RATE_LIMITED"])
        # Bob's bucket is his own: he streams on a thread of his own.
        events, errors = await stream(server, "sse", STREAM, {"input": fast}, headers=as_bob)
        assert errors == [] and events[-1]["status"] == "SUCCESS"
