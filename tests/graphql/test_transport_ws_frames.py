"""Malformed `subscribe` payloads on graphql-transport-ws are answered, never INTERNAL.

A subscribe whose `query` is null or not a string was never answered (no
`error`, no close: the client waits for ever), and one whose `operationName` is
not a string answered INTERNAL (the "Unknown operation named" request error,
masked as a bug), where the same request over HTTP is a 400 BAD_USER_INPUT.
"""

from __future__ import annotations

from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.graphql.clients import TransportWS
from tests.graphql.conftest import Server

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.mark.parametrize(
    "payload",
    [
        {"query": None},
        {"query": 5},
        {"query": "{ health { status } }", "operationName": 5},
    ],
)
async def test_a_malformed_subscribe_is_answered_as_bad_input(
    server: Server, payload: dict[str, Any]
) -> None:
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.send({"id": "bad", "type": "subscribe", "payload": payload})
        try:
            message = await ws.next_message()
        except TimeoutError:
            pytest.fail(f"{payload} was never answered")
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4400, closed
            return
        assert message["id"] == "bad" and message["type"] == "error", message
        codes = [e.get("extensions", {}).get("code") for e in message["payload"]]
        assert codes == ["BAD_USER_INPUT"], message
