"""An operationName that names no operation of the document is the client's mistake.

Over plain HTTP it is a 400 BAD_USER_INPUT ('Unknown operation named "X".'); over
Server-Sent Events and both WebSocket protocols the same request answered
INTERNAL ("Internal server error", the request error masked as a bug and logged
with a traceback). So did an SSE request with `"query": null`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.graphql.clients import LegacyWS, TransportWS
from tests.graphql.conftest import Server

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

SUBSCRIPTION = 'subscription { threadEvents(threadId: "t") { seq } }'
UNKNOWN = 'Unknown operation named "X".'


def _codes(errors: list[dict[str, Any]]) -> list[str | None]:
    return [e.get("extensions", {}).get("code") for e in errors]


async def test_over_plain_http_it_is_bad_input(server: Server) -> None:
    """The reference the other transports are held to."""
    body = {"query": "{ health { status } }", "operationName": "X"}
    response = await server.http.post("/graphql", json=body)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert _codes(errors) == ["BAD_USER_INPUT"] and errors[0]["message"] == UNKNOWN


@pytest.mark.parametrize(
    "body",
    [
        {"query": "{ health { status } }", "operationName": "X"},
        {"query": SUBSCRIPTION, "operationName": "X"},
        {"query": None},
    ],
)
async def test_over_sse_it_is_bad_input(
    server: Server, server_errors: Callable[[], list[str]], body: dict[str, Any]
) -> None:
    headers = {"accept": "text/event-stream"}
    response = await server.http.post("/graphql", json=body, headers=headers)
    if response.status_code == 400:
        assert _codes(response.json()["errors"]) == ["BAD_USER_INPUT"]
        return
    results = [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: {")
    ]
    assert results and all(_codes(r.get("errors", [])) == ["BAD_USER_INPUT"] for r in results), (
        response.text
    )
    if body.get("operationName"):
        assert results[0]["errors"][0]["message"] == UNKNOWN
    assert server_errors() == []  # no bug to log


async def test_over_graphql_transport_ws_it_is_bad_input(
    server: Server, server_errors: Callable[[], list[str]]
) -> None:
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.send(
            {
                "id": "1",
                "type": "subscribe",
                "payload": {"query": SUBSCRIPTION, "operationName": "X"},
            }
        )
        message = await ws.next_message()
        assert message["type"] == "error" and _codes(message["payload"]) == ["BAD_USER_INPUT"], (
            message
        )
        assert message["payload"][0]["message"] == UNKNOWN
    assert server_errors() == []


async def test_over_legacy_graphql_ws_it_is_bad_input(
    server: Server, server_errors: Callable[[], list[str]]
) -> None:
    async with LegacyWS.connect(server.ws_url) as ws:
        await ws.send(
            {"id": "1", "type": "start", "payload": {"query": SUBSCRIPTION, "operationName": "X"}}
        )
        message = await ws.receive()
        assert message["type"] == "error", message
        assert _codes([message["payload"]]) == ["BAD_USER_INPUT"], message
        assert message["payload"]["message"] == UNKNOWN
    assert server_errors() == []
