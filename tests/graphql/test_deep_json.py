"""JSON arguments nested deep, but not past what the body parser takes: never INTERNAL.

README: "JSON nested past the recursion limit [is] 400 with a GraphQL error body,
never a 500". A body the parser accepts (arrays nested ~950 deep in `metadata`
or `config`) went on to the store, whose JSON encoding hit Python's recursion
limit: INTERNAL ("maximum recursion depth exceeded while encoding a JSON object")
on PostgreSQL, for startRun, createThread and a threads metadata filter. Too deep
is the caller's input: BAD_USER_INPUT (or 400), as the parser's own limit is.
"""

from __future__ import annotations

import json

import pytest

from tests.graphql.conftest import Server

OPERATIONS = {
    "startRun metadata": 'mutation($m: JSON) { startRun(input: {message: "hi", metadata: $m}) '
    "{ id } }",
    "startRun config": 'mutation($m: JSON) { startRun(input: {message: "hi", config: $m}) { id } }',
    "createThread metadata": "mutation($m: JSON) { createThread(input: {metadata: $m}) { id } }",
    "threads filter": "query($m: JSON) { threads(filter: {metadata: $m}) { totalCount } }",
}


@pytest.mark.parametrize("depth", [900, 950, 980])
@pytest.mark.parametrize("query", OPERATIONS.values(), ids=OPERATIONS.keys())
async def test_deep_json_is_refused_or_taken_never_internal(
    server: Server, query: str, depth: int
) -> None:
    nested = "[" * depth + "]" * depth
    body = '{"query": ' + json.dumps(query) + ', "variables": {"m": {"a": ' + nested + "}}}"

    response = await server.http.post(
        "/graphql", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code in (200, 400), response.text
    codes = [e["extensions"]["code"] for e in response.json().get("errors", [])]
    assert set(codes) <= {"BAD_USER_INPUT"}, response.text[:300]
