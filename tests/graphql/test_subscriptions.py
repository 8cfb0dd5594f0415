"""Subscriptions over graphql-transport-ws, legacy graphql-ws and SSE, on both backends."""

from __future__ import annotations

from typing import Any

from tests.graphql.clients import (
    LegacyWS,
    TransportWS,
    codes,
    data,
    eventually,
    gql,
    sse,
    until_finished,
)
from tests.graphql.conftest import Server

EVENTS = """
subscription($run: ID!, $after: Int) {
  runEvents(runId: $run, afterSeq: $after) {
    __typename seq runId threadId at
    ... on RunStatusChanged { status error }
    ... on AgentTransition { fromAgent toAgent reason }
    ... on NodeUpdate { node namespace update }
    ... on MessageDelta { node messageId delta }
    ... on CheckpointSaved { checkpointId namespace step }
    ... on Interrupted { node value }
  }
}
"""

THREAD_EVENTS = """
subscription($thread: ID!) {
  threadEvents(threadId: $thread) { __typename seq runId ... on RunStatusChanged { status } }
}
"""


async def start(server: Server, **fields: Any) -> dict[str, Any]:
    body = await gql(
        server.http,
        "mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status } }",
        {"input": {"message": "Help me build a FastAPI app", **fields}},
    )
    run: dict[str, Any] = data(body)["startRun"]
    return run


def events_of(payloads: list[dict[str, Any]], field: str = "runEvents") -> list[dict[str, Any]]:
    for payload in payloads:
        assert "errors" not in payload, payload
    return [p["data"][field] for p in payloads]


async def test_run_events_from_the_start(server: Server) -> None:
    run = await start(server)
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("run", EVENTS, {"run": run["id"], "after": 0})
        payloads, end = await ws.collect("run")
    assert end == {"id": "run", "type": "complete"}
    events = events_of(payloads)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["runId"] for e in events} == {run["id"]}
    assert {e["threadId"] for e in events} == {run["threadId"]}
    assert events[0] == {**events[0], "__typename": "RunStatusChanged", "status": "PENDING"}
    assert events[-1] == {**events[-1], "__typename": "RunStatusChanged", "status": "SUCCESS"}
    kinds = {e["__typename"] for e in events}
    assert {"AgentTransition", "NodeUpdate", "MessageDelta", "CheckpointSaved"} <= kinds
    transition = next(e for e in events if e["__typename"] == "AgentTransition")
    assert transition["fromAgent"] == "SUPERVISOR" and transition["toAgent"] == "IMPLEMENTATION"
    text = "".join(e["delta"] for e in events if e["__typename"] == "MessageDelta")
    assert "FastAPI" in text

    recorded = await gql(
        server.http,
        "query($id: ID!) { run(id: $id) { events(first: 1000) { seq __typename } } }",
        {"id": run["id"]},
    )
    stored = data(recorded)["run"]["events"]
    assert [(e["seq"], e["__typename"]) for e in stored] == [
        (e["seq"], e["__typename"]) for e in events
    ]


async def test_replay_after_a_sequence_number(server: Server) -> None:
    run = await start(server, graph="slow", config={"delay": 0.15})
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("head", EVENTS, {"run": run["id"]})
        head, end = await ws.collect("head", limit=3)
        assert end is None
        await ws.complete("head")
    last = head[-1]["data"]["runEvents"]["seq"]
    async with TransportWS.connect(server.ws_url) as ws:  # a reconnecting client
        await ws.subscribe("tail", EVENTS, {"run": run["id"], "after": last})
        tail, end = await ws.collect("tail")
    assert end is not None and end["type"] == "complete"
    seqs = [e["seq"] for e in events_of(head)] + [e["seq"] for e in events_of(tail)]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate
    assert events_of(tail)[-1]["status"] == "SUCCESS"

    async with TransportWS.connect(server.ws_url) as ws:  # replay of a finished run
        await ws.subscribe("again", EVENTS, {"run": run["id"], "after": 4})
        again, end = await ws.collect("again")
    assert [e["seq"] for e in events_of(again)] == list(range(5, len(seqs) + 1))

    # At the final event: nothing follows, that client has seen the end. Past it: no
    # client saw that seq, and a stream that sent nothing would read as a cut one.
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("end", EVENTS, {"run": run["id"], "after": len(seqs)})
        at_end, end = await ws.collect("end")
        assert at_end == [] and end == {"id": "end", "type": "complete"}
        await ws.subscribe("past", EVENTS, {"run": run["id"], "after": len(seqs) + 1})
        _, end = await ws.collect("past")
    assert end is not None and end["type"] == "error", end
    assert [e["extensions"]["code"] for e in end["payload"]] == ["BAD_USER_INPUT"]
    assert f"past run {run['id']}'s last event ({len(seqs)})" in end["payload"][0]["message"]
    past = await sse(server.http, EVENTS, {"run": run["id"], "after": 2**31 - 1})
    assert past[0][0] == "next" and codes(past[0][1]) == ["BAD_USER_INPUT"]


async def test_disconnect_mid_run_leaves_the_run_going(server: Server) -> None:
    run = await start(server, graph="slow", config={"delay": 0.15})
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("run", EVENTS, {"run": run["id"]})
        await ws.collect("run", limit=2)
        assert server.gateway.bus.subscriber_count == 1
    # The socket is closed without `complete`: only that subscription ends.
    await eventually(lambda: server.gateway.bus.subscriber_count == 0)
    assert (await until_finished(server.http, run["id"]))["status"] == "SUCCESS"


async def test_completing_one_subscription_keeps_the_others(server: Server) -> None:
    run = await start(server, graph="slow", config={"delay": 0.1})
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("a", EVENTS, {"run": run["id"]})
        await ws.subscribe("b", EVENTS, {"run": run["id"]})
        await ws.collect("a", limit=1)
        await ws.complete("a")
        payloads, end = await ws.collect("b")
    assert end == {"id": "b", "type": "complete"}
    assert events_of(payloads)[-1]["status"] == "SUCCESS"


async def test_thread_events(server: Server) -> None:
    first = await start(server, wait=True)
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("thread", THREAD_EVENTS, {"thread": first["threadId"]})
        await eventually(lambda: server.gateway.bus.subscriber_count == 1)  # subscribed
        second = await start(server, threadId=first["threadId"])
        received: list[dict[str, Any]] = []
        while not received or received[-1].get("status") != "SUCCESS":
            message = await ws.next_message()
            assert message["type"] == "next", message
            received += events_of([message["payload"]], "threadEvents")
        await ws.complete("thread")
    assert {e["runId"] for e in received} == {second["id"]}
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    await eventually(lambda: server.gateway.bus.subscriber_count == 0)


async def test_legacy_graphql_ws(server: Server) -> None:
    run = await start(server)
    async with LegacyWS.connect(server.ws_url) as ws:
        await ws.start("1", EVENTS, {"run": run["id"]})
        payloads, end = await ws.collect("1")
        assert end == {"id": "1", "type": "complete"}
        events = events_of(payloads)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["status"] == "SUCCESS"

        await ws.start("2", EVENTS, {"run": "00000000-0000-4000-8000-000000000000"})
        _, error = await ws.collect("2")
        assert error["type"] == "error"
        assert error["payload"]["extensions"]["code"] == "NOT_FOUND"


async def test_server_sent_events(server: Server) -> None:
    run = await start(server)
    received = await sse(server.http, EVENTS, {"run": run["id"]})
    assert received[-1] == ("complete", None)
    events = [payload["data"]["runEvents"] for kind, payload in received if kind == "next"]
    assert len(events) == len(received) - 1
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["status"] == "SUCCESS"

    missing = await sse(server.http, EVENTS, {"run": "00000000-0000-4000-8000-000000000000"})
    assert missing[0][0] == "next" and codes(missing[0][1]) == ["NOT_FOUND"]


async def test_unknown_run_or_thread_is_not_found(server: Server) -> None:
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("run", EVENTS, {"run": "00000000-0000-4000-8000-000000000000"})
        payloads, end = await ws.collect("run")
        assert payloads == [] and end is not None and end["type"] == "error"
        assert [e["extensions"]["code"] for e in end["payload"]] == ["NOT_FOUND"]

        await ws.subscribe("thread", THREAD_EVENTS, {"thread": "no-such-thread"})
        _, end = await ws.collect("thread")
        assert end is not None and end["type"] == "error"
        assert [e["extensions"]["code"] for e in end["payload"]] == ["NOT_FOUND"]

        await ws.subscribe("bad", EVENTS, {"run": "no-such-run", "after": -1})
        _, end = await ws.collect("bad")
        assert end is not None
        assert [e["extensions"]["code"] for e in end["payload"]] == ["BAD_USER_INPUT"]
