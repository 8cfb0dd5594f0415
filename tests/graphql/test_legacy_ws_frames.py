"""Malformed `start` frames on the legacy `graphql-ws` protocol.

A `start` with no payload, a payload that is not an object, or no query is the
client's mistake: the operation answers `error` (or the socket is closed with a
4400 code, as graphql-transport-ws does), and the server logs no traceback. The
socket was dropped instead (KeyError in Strawberry's legacy handler: "Exception
in ASGI application", no close code), taking the client's other subscriptions
with it; a start with `"query": null` was never answered at all.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.graphql.clients import LegacyWS
from tests.graphql.conftest import Server

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

MISSING = str(uuid.uuid4())
GOOD = "subscription($id: ID!) { runEvents(runId: $id) { seq } }"


@pytest.mark.parametrize(
    "frame",
    [
        {"id": "bad", "type": "start"},
        {"id": "bad", "type": "start", "payload": "x"},
        {"id": "bad", "type": "start", "payload": {"query": None}},
    ],
)
async def test_a_malformed_start_is_answered_and_the_socket_serves_on(
    server: Server, frame: dict[str, Any]
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
            assert code == 4400, f"socket dropped (close code {code}) after {frame}"
            return
        assert seen["good"]["type"] == "error"  # no run: NOT_FOUND, the socket still serves
        assert seen["bad"]["type"] == "error", seen["bad"]
