"""What a subscriber sees when the thread of the run it follows is deleted mid-run.

deleteThread cancels the thread's runs first (as deleteRun and cancelRun do), so a
follower sees the run end CANCELLED, then the stream completes. A run deleted before
its end reached the follower (an operator's purge, which stops nothing; a replica
frozen past the deletion's wait) ends the subscription with a NOT_FOUND error: never a
stream that just stops, which a client cannot tell from a dropped connection. Over
graphql-transport-ws, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from tests.graphql.clients import TransportWS, data, gql
from tests.graphql.conftest import Server

EVENTS = """
subscription($run: ID!) {
  runEvents(runId: $run) { __typename seq runId ... on RunStatusChanged { status error } }
}
"""

STREAM = """
subscription($input: StartRunInput!) {
  runStream(input: $input) { __typename seq runId ... on RunStatusChanged { status error } }
}
"""

DELETE = "mutation($id: ID!) { deleteThread(id: $id) { deleted runsDeleted } }"

# Each node of the slow graph sleeps this long: the run is mid-way when deleted.
GOING = {"graph": "slow", "message": "go", "config": {"delay": 30.0}}


async def start(server: Server, **fields: Any) -> dict[str, Any]:
    body = await gql(
        server.http,
        "mutation($input: StartRunInput!) { startRun(input: $input) { id threadId } }",
        {"input": fields},
    )
    run: dict[str, Any] = data(body)["startRun"]
    return run


async def delete(server: Server, thread_id: str) -> None:
    deleted = data(await gql(server.http, DELETE, {"id": thread_id}))["deleteThread"]
    assert deleted["deleted"] is True


def statuses(payloads: list[dict[str, Any]], field: str) -> list[str]:
    for payload in payloads:
        assert "errors" not in payload, payload
    return [p["data"][field]["status"] for p in payloads if "status" in p["data"][field]]


async def test_a_running_run_deleted_with_its_thread_ends_cancelled(server: Server) -> None:
    run = await start(server, **GOING)
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("run", EVENTS, {"run": run["id"]})
        head, _ = await ws.collect("run", limit=2)  # PENDING, RUNNING
        assert statuses(head, "runEvents") == ["PENDING", "RUNNING"]
        await delete(server, run["threadId"])
        rest, end = await ws.collect("run")
    assert end == {"id": "run", "type": "complete"}
    assert statuses(head + rest, "runEvents")[-1] == "CANCELLED"


async def test_a_pending_run_deleted_with_its_thread_ends_cancelled(server: Server) -> None:
    going = await start(server, **GOING)
    queued = await start(server, threadId=going["threadId"], multitask="ENQUEUE", **GOING)
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("queued", EVENTS, {"run": queued["id"]})
        head, _ = await ws.collect("queued", limit=1)
        assert statuses(head, "runEvents") == ["PENDING"]
        await delete(server, going["threadId"])
        rest, end = await ws.collect("queued")
    assert end == {"id": "queued", "type": "complete"}
    assert statuses(head + rest, "runEvents") == ["PENDING", "CANCELLED"]


async def test_run_stream_ends_cancelled_when_its_thread_is_deleted(server: Server) -> None:
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("stream", STREAM, {"input": GOING})
        head, _ = await ws.collect("stream", limit=2)  # PENDING, RUNNING
        assert statuses(head, "runStream") == ["PENDING", "RUNNING"]
        thread = await gql(
            server.http,
            "query($id: ID!) { run(id: $id) { threadId } }",
            {"id": head[0]["data"]["runStream"]["runId"]},
        )
        await delete(server, data(thread)["run"]["threadId"])
        rest, end = await ws.collect("stream")
    assert end == {"id": "stream", "type": "complete"}
    assert statuses(head + rest, "runStream")[-1] == "CANCELLED"


async def test_a_run_deleted_as_it_starts_ends_cancelled(server: Server) -> None:
    run = await start(server, **GOING)
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("run", EVENTS, {"run": run["id"]})
        head, _ = await ws.collect("run", limit=1)
        await delete(server, run["threadId"])
        rest, end = await ws.collect("run")
    assert end == {"id": "run", "type": "complete"}
    assert statuses(head + rest, "runEvents")[-1] == "CANCELLED"


async def test_a_run_purged_before_its_end_ends_the_subscription_not_found(
    server: Server,
) -> None:
    # The manager's own purge (from Python) stops no run: this one goes on
    # to its end, which finds its row gone and records nothing.
    run = await start(server, graph="slow", message="go", config={"delay": 0.2})
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("run", EVENTS, {"run": run["id"]})
        head, _ = await ws.collect("run", limit=2)  # PENDING, RUNNING
        await server.gateway.manager.purge_thread(run["threadId"])
        rest, end = await ws.collect("run")
    *events, last = rest
    assert "CANCELLED" not in statuses(head + events, "runEvents")
    # The error comes as the operation's last result (graphql-transport-ws sends an
    # `error` message only for an operation that never started), then `complete`.
    assert last["data"] is None
    (error,) = last["errors"]
    assert error["extensions"]["code"] == "NOT_FOUND"
    assert "deleted before it ended" in error["message"]
    assert end == {"id": "run", "type": "complete"}
