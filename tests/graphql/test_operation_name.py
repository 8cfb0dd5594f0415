"""A document of several operations names the one to run (GraphQL spec, GetOperation).

Without `operationName` such a request is a request error: nothing runs. The
gateway ran the document's first operation instead, so a client that forgot the
name got an answer to whichever operation came first (a mutation included).
"""

from __future__ import annotations

import pytest

from tests.graphql.clients import data, gql
from tests.graphql.conftest import Server

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


async def test_several_operations_without_a_name_run_none(server: Server) -> None:
    made = data(
        await gql(server.http, 'mutation { createThread(input: {threadId: "keep"}) { id } }')
    )
    assert made["createThread"]["id"] == "keep"
    document = (
        'mutation Drop { deleteThread(id: "keep") { deleted } } query Look { graphs { name } }'
    )
    response = await server.http.post("/graphql", json={"query": document})
    body = response.json()
    assert body.get("data") is None, body
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
    assert "operation name" in body["errors"][0]["message"].lower()
    kept = data(await gql(server.http, '{ thread(id: "keep") { id } }'))
    assert kept["thread"] == {"id": "keep"}
    named = await server.http.post("/graphql", json={"query": document, "operationName": "Look"})
    assert data(named.json())["graphs"]
