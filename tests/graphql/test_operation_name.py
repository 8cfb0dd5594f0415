"""A document of several operations names the one to run (GraphQL spec, GetOperation).

Without `operationName` such a request is a request error: nothing runs. The
gateway ran the document's first operation instead (Strawberry falls back to
the first operation's name), so a client that forgot the name got an answer to
whichever operation came first, a mutation included. Checked on every
transport: plain HTTP, SSE, `graphql-transport-ws` and legacy `graphql-ws`.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.graphql.clients import LegacyWS, TransportWS, data, gql, sse
from tests.graphql.conftest import Server

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

DROP_THEN_LOOK = (
    'mutation Drop { deleteThread(id: "keep") { deleted } } query Look { graphs { name } }'
)
DROP_THEN_WATCH = (
    'mutation Drop { deleteThread(id: "keep") { deleted } }'
    ' subscription Watch { threadEvents(threadId: "keep") { seq } }'
)


async def keep(server: Server) -> None:
    made = data(
        await gql(server.http, 'mutation { createThread(input: {threadId: "keep"}) { id } }')
    )
    assert made["createThread"]["id"] == "keep"


async def kept(server: Server) -> None:
    found = data(await gql(server.http, '{ thread(id: "keep") { id } }'))
    assert found["thread"] == {"id": "keep"}


def refused(errors: list[dict[str, Any]]) -> None:
    assert [e["extensions"]["code"] for e in errors] == ["BAD_USER_INPUT"], errors
    message = errors[0]["message"].lower()
    assert "operation name" in message and "operationname" in message, message


async def test_several_operations_without_a_name_run_none(server: Server) -> None:
    await keep(server)
    response = await server.http.post("/graphql", json={"query": DROP_THEN_LOOK})
    body = response.json()
    assert body.get("data") is None, body
    refused(body["errors"])
    await kept(server)
    named = await server.http.post(
        "/graphql", json={"query": DROP_THEN_LOOK, "operationName": "Look"}
    )
    assert data(named.json())["graphs"]
    # Cached and found valid by then: still refused without a name.
    again = await server.http.post("/graphql", json={"query": DROP_THEN_LOOK})
    refused(again.json()["errors"])
    await kept(server)


async def test_two_operations_of_one_name_are_refused_in_the_specs_words(
    server: Server,
) -> None:
    body = await gql(server.http, "query A { graphs { name } } query A { health { status } }")
    assert body["data"] is None
    assert [e["message"] for e in body["errors"]] == ["There can be only one operation named 'A'."]
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]


async def test_one_operation_needs_no_name(server: Server) -> None:
    # Fragments beside the operation are no second operation.
    document = "query Look { ...G } fragment G on Query { graphs { name } }"
    assert data(await gql(server.http, document))["graphs"]


async def test_server_sent_events_run_none_without_a_name(server: Server) -> None:
    await keep(server)
    received = await sse(server.http, DROP_THEN_LOOK)
    errors = [e for kind, payload in received if kind == "next" for e in payload["errors"]]
    refused(errors)
    assert not any(kind == "next" and payload.get("data") for kind, payload in received)
    await kept(server)


async def test_graphql_transport_ws_runs_none_without_a_name(server: Server) -> None:
    await keep(server)
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("1", DROP_THEN_WATCH)
        payloads, end = await ws.collect("1")
        assert payloads == [] and end is not None and end["type"] == "error", (payloads, end)
        refused(end["payload"])
    await kept(server)


async def test_legacy_graphql_ws_runs_none_without_a_name(server: Server) -> None:
    # Legacy graphql-ws runs subscriptions only: two of them, the first on a thread that
    # does not exist (NOT_FOUND had it run).
    document = (
        'subscription Gone { threadEvents(threadId: "no-such-thread") { seq } }'
        ' subscription Watch { threadEvents(threadId: "keep") { seq } }'
    )
    async with LegacyWS.connect(server.ws_url) as ws:
        await ws.start("1", document)
        payloads, end = await ws.collect("1")
        assert payloads == [] and end["type"] == "error", (payloads, end)
        refused([end["payload"]])
