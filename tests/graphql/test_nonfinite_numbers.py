"""JSON numbers no database stores as JSON (1e400, NaN, Infinity) in a caller's metadata.

GraphQL parses `1e400` as a float infinity, and a JSON body may carry `NaN` or
`Infinity` (Python's json module reads them). Whatever the gateway does with
such a value (refuse it as BAD_USER_INPUT, or store something else), it must not
store text the database's own JSON functions cannot read: on SQLite a row holding
`{"x":Infinity}` made every metadata filter of every caller answer INTERNAL
("malformed JSON") from then on.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.graphql.clients import codes, gql
from tests.graphql.conftest import Server

RUNS = "{ runs(filter: {metadata: {k: 1}}) { totalCount } }"
THREADS = "{ threads(filter: {metadata: {k: 1}}) { totalCount } }"
STATS = "{ runStats(filter: {metadata: {k: 1}}) { runs } }"
DELETE = "mutation { deleteThreads(filter: {metadata: {k: 1}}) { deleted } }"

WRITES: list[tuple[str, dict[str, Any]]] = [
    ('mutation { startRun(input: {message: "hi", metadata: {x: 1e400}, wait: true}) { id } }', {}),
    (
        'mutation($m: JSON) { startRun(input: {message: "hi", metadata: $m, wait: true}) { id } }',
        {"m": {"x": float("nan")}},
    ),
    (
        "mutation($m: JSON) { createThread(input: {metadata: $m}) { id } }",
        {"m": {"x": float("-inf")}},
    ),
]


async def _post(server: Server, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """POST with Python's json, which writes NaN and Infinity as such (as a JS client may)."""
    payload = json.dumps({"query": query, "variables": variables})  # allow_nan: NaN, Infinity
    response = await server.http.post(
        "/graphql", content=payload, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize(("write", "variables"), WRITES)
async def test_a_non_finite_number_does_not_break_metadata_filters(
    server: Server, write: str, variables: dict[str, Any]
) -> None:
    written = await _post(server, write, variables)
    assert "INTERNAL" not in codes(written), written
    for query in (RUNS, THREADS, STATS, DELETE):
        body = await gql(server.http, query)
        assert "errors" not in body, (query, body["errors"])
