"""Malformed `subscribe` messages on graphql-transport-ws are answered, never INTERNAL.

A subscribe whose `query` is null or not a string was never answered (no
`error`, no close: the client waits for ever), and one whose `operationName` is
not a string answered INTERNAL (the "Unknown operation named" request error,
masked as a bug), where the same request over HTTP is a 400 BAD_USER_INPUT.

The protocol (graphql-ws's PROTOCOL.md) answers a message of a format it does
not specify by closing the socket with 4400, and its reference server checks a
subscribe's fields so (`validateMessage`): the gateway does the same, naming the
field in the close reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.graphql.clients import TransportWS
from tests.graphql.conftest import Server

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

HEALTH = "{ health { status } }"


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"id": "bad", "type": "subscribe", "payload": {"query": None}}, "query"),
        ({"id": "bad", "type": "subscribe", "payload": {"query": 5}}, "query"),
        (
            {"id": "bad", "type": "subscribe", "payload": {"query": HEALTH, "operationName": 5}},
            "operationName",
        ),
        (
            {"id": "bad", "type": "subscribe", "payload": {"query": HEALTH, "operationName": {}}},
            "operationName",
        ),
        (
            {"id": "bad", "type": "subscribe", "payload": {"query": HEALTH, "variables": [1]}},
            "variables",
        ),
        (
            {"id": "bad", "type": "subscribe", "payload": {"query": HEALTH, "extensions": "x"}},
            "extensions",
        ),
        ({"id": "bad", "type": "subscribe", "payload": "x"}, "payload"),
        ({"id": "", "type": "subscribe", "payload": {"query": HEALTH}}, "id"),
        ({"id": ["bad"], "type": "subscribe", "payload": {"query": HEALTH}}, "id"),
        ({"id": {"bad": 1}, "type": "complete"}, "id"),
    ],
)
async def test_a_malformed_operation_message_closes_with_4400(
    server: Server,
    server_errors: Callable[[], list[str]],
    message: dict[str, Any],
    field: str,
) -> None:
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.send(message)
        try:
            answer = await ws.next_message()
        except TimeoutError:
            pytest.fail(f"{message} was never answered")
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4400, closed
            assert field in closed.rcvd.reason, closed.rcvd.reason
        else:
            pytest.fail(f"{message} answered {answer}, the socket still open")
    assert server_errors() == []


async def test_a_well_formed_subscribe_still_runs(server: Server) -> None:
    """The checks let through what the protocol allows: null variables, operationName
    and extensions."""
    async with TransportWS.connect(server.ws_url) as ws:
        payload = {"query": HEALTH, "variables": None, "operationName": None, "extensions": None}
        await ws.send({"id": "ok", "type": "subscribe", "payload": payload})
        results, end = await ws.collect("ok")
        assert [r["data"]["health"]["status"] for r in results] == ["HEALTHY"]
        assert end is not None and end["type"] == "complete"


async def test_a_connection_init_with_a_null_payload_is_acknowledged(server: Server) -> None:
    """graphql-ws's PROTOCOL.md types ConnectionInit's payload `Record | null` and its
    reference server takes null; its client sends null when `connectionParams` returns it
    (a frontend with no token to pass)."""
    async with TransportWS.connect(server.ws_url, init=False) as ws:
        await ws.send({"type": "connection_init", "payload": None})
        try:
            ack = await ws.receive()
        except ConnectionClosed as closed:
            pytest.fail(f"closed: {closed.rcvd}")
        assert ack["type"] == "connection_ack", ack
        await ws.send({"id": "ok", "type": "subscribe", "payload": {"query": HEALTH}})
        results, end = await ws.collect("ok")
        assert [r["data"]["health"]["status"] for r in results] == ["HEALTHY"]
        assert end is not None and end["type"] == "complete"
