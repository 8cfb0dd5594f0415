"""Malformed `start` frames on the legacy `graphql-ws` protocol.

A `start` with no payload, a payload that is not an object, or no query is the
client's mistake: the operation answers `error` (BAD_USER_INPUT), the socket
serves on, and the server logs no traceback. The socket was dropped instead
(KeyError in Strawberry's legacy handler: "Exception in ASGI application", no
close code), taking the client's other subscriptions with it; a start with
`"query": null` was never answered at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.graphql.clients import LegacyWS, data, eventually, gql
from tests.graphql.conftest import Server

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

MISSING = str(uuid.uuid4())
GOOD = "subscription($id: ID!) { runEvents(runId: $id) { seq } }"
THREAD = "subscription($t: ID!) { threadEvents(threadId: $t) { seq } }"


def _code(message: dict[str, Any]) -> str | None:
    code: str | None = message["payload"].get("extensions", {}).get("code")
    return code


@pytest.mark.parametrize(
    "frame",
    [
        {"id": "bad", "type": "start"},
        {"id": "bad", "type": "start", "payload": "x"},
        {"id": "bad", "type": "start", "payload": {"query": None}},
        {"id": "bad", "type": "start", "payload": {"query": 5}},
        {"id": "bad", "type": "start", "payload": {"query": THREAD, "operationName": {}}},
        {"id": "bad", "type": "start", "payload": {"query": THREAD, "variables": [1]}},
    ],
)
async def test_a_malformed_start_is_answered_and_the_socket_serves_on(
    server: Server, server_errors: Callable[[], list[str]], frame: dict[str, Any]
) -> None:
    async with LegacyWS.connect(server.ws_url) as ws:
        await ws.send(frame)
        await ws.start("good", GOOD, {"id": MISSING})
        seen: dict[str, dict[str, Any]] = {}
        try:
            while not {"good", "bad"} <= seen.keys():
                message = await ws.receive()
                seen.setdefault(str(message.get("id")), message)
        except TimeoutError:
            pytest.fail(f"{frame} was never answered")
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            pytest.fail(f"socket closed (close code {code}) after {frame}")
        assert seen["good"]["type"] == "error"  # no run: NOT_FOUND, the socket still serves
        assert _code(seen["good"]) == "NOT_FOUND", seen["good"]
        assert seen["bad"]["type"] == "error", seen["bad"]
        assert _code(seen["bad"]) == "BAD_USER_INPUT", seen["bad"]
    assert server_errors() == []


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "start", "payload": {"query": THREAD}},  # no id
        {"id": ["x"], "type": "start", "payload": {"query": THREAD}},
        {"type": "stop"},
        {"id": ["x"], "type": "stop"},
        {"id": "x"},  # no type
    ],
)
async def test_a_frame_without_a_usable_id_or_type_does_not_drop_the_socket(
    server: Server, server_errors: Callable[[], list[str]], frame: dict[str, Any]
) -> None:
    """A start is refused with the id it came with; a stop or a typeless frame is
    ignored, as Strawberry ignores a type it does not know. A subscription already
    running is not disturbed."""
    start_run = 'mutation { startRun(input: {message: "hi", wait: true}) { threadId } }'
    thread = data(await gql(server.http, start_run))["startRun"]["threadId"]
    async with LegacyWS.connect(server.ws_url) as ws:
        await ws.start("held", THREAD, {"t": thread})
        await eventually(lambda: server.gateway.bus.subscriber_count == 1)  # it runs
        await ws.send(frame)
        await ws.stop("held")
        refused: list[dict[str, Any]] = []
        while True:
            message = await ws.receive()
            if message.get("id") == "held":
                break
            if message["type"] != "ka":  # keep-alive
                refused.append(message)
        assert message["type"] == "complete", message  # it ran until its stop
        if frame.get("type") == "start":
            assert [(m["type"], m.get("id"), _code(m)) for m in refused] == [
                ("error", frame.get("id"), "BAD_USER_INPUT")
            ]
        else:
            assert refused == []
    assert server_errors() == []


async def test_an_empty_id_is_named_as_such(server: Server) -> None:
    async with LegacyWS.connect(server.ws_url) as ws:
        await ws.send({"id": "", "type": "start", "payload": {"query": THREAD}})
        message = await ws.receive()
        assert message["type"] == "error"
        assert "not an empty string" in message["payload"]["message"], message


@pytest.mark.parametrize("text", ["not json", "[1]", "5", '"start"', "null"])
async def test_a_frame_that_is_no_json_object_is_answered_and_the_socket_serves_on(
    server: Server, server_errors: Callable[[], list[str]], text: str
) -> None:
    """As subscriptions-transport-ws's server answers a frame it cannot parse: a
    `connection_error` saying why, and the socket serves on (Strawberry dropped the
    frame unanswered, and one of JSON but no object failed in its handler)."""
    async with LegacyWS.connect(server.ws_url) as ws:
        await ws.ws.send(text)
        refused = await ws.receive()
        assert refused["type"] == "connection_error", refused
        assert "JSON object" in refused["payload"]["message"], refused
        await ws.start("good", GOOD, {"id": MISSING})
        _, error = await ws.collect("good")
        assert error["type"] == "error" and _code(error) == "NOT_FOUND", error
    assert server_errors() == []
