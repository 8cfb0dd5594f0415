"""JSON arguments nested deep, but not past what the body parser takes: never INTERNAL.

README: "JSON nested past the recursion limit [is] 400 with a GraphQL error body,
never a 500". A body the parser accepts (arrays nested ~950 deep in `metadata`
or `config`) went on to the store, whose JSON encoding hit Python's recursion
limit: INTERNAL ("maximum recursion depth exceeded while encoding a JSON object")
for startRun, createThread and a threads metadata filter. Every JSON argument
now nests at most MAX_JSON_DEPTH (64) levels, on HTTP and WebSocket alike; past
that it is BAD_USER_INPUT.
"""

from __future__ import annotations

import json
from typing import Any

from code_hero.inputs import MAX_JSON_DEPTH
from tests.graphql.clients import TransportWS, gql
from tests.graphql.conftest import Server

OPERATIONS = {
    "startRun metadata": 'mutation($m: JSON) { startRun(input: {message: "hi", metadata: $m}) '
    "{ id } }",
    "startRun config": 'mutation($m: JSON) { startRun(input: {message: "hi", config: $m}) { id } }',
    "createThread metadata": "mutation($m: JSON) { createThread(input: {metadata: $m}) { id } }",
    "threads filter": "query($m: JSON) { threads(filter: {metadata: $m}) { totalCount } }",
}
CREATE = OPERATIONS["createThread metadata"]


def _nested(levels: int) -> str:
    """A JSON object `{"a": [[...]]}` nesting `levels` levels of objects and arrays."""
    return '{"a": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


def _refused(errors: list[dict[str, Any]]) -> None:
    assert [e["extensions"]["code"] for e in errors] == ["BAD_USER_INPUT"], str(errors)[:300]
    assert f"more than {MAX_JSON_DEPTH} levels deep" in errors[0]["message"]


async def test_deep_json_is_refused_never_internal(server: Server) -> None:
    # Every case on one server (a server a case cost the suite about 20 s).
    for name, query in OPERATIONS.items():
        for depth in (MAX_JSON_DEPTH + 1, 900, 950, 980):
            body = '{"query": ' + json.dumps(query) + ', "variables": {"m": ' + _nested(depth)
            response = await server.http.post(
                "/graphql", content=body + "}}", headers={"content-type": "application/json"}
            )
            assert response.status_code == 200, (name, depth, response.text[:300])
            _refused(response.json()["errors"])
    counts = await gql(server.http, "{ threads { totalCount } runs { totalCount } }")
    assert counts["data"] == {"threads": {"totalCount": 0}, "runs": {"totalCount": 0}}


async def test_json_at_the_limit_is_taken(server: Server) -> None:
    body = '{"query": ' + json.dumps(CREATE) + ', "variables": {"m": ' + _nested(64) + "}}"
    response = await server.http.post(
        "/graphql", content=body, headers={"content-type": "application/json"}
    )
    assert "errors" not in response.json(), response.text[:300]


async def test_deep_json_is_refused_over_a_websocket(server: Server) -> None:
    async with TransportWS.connect(server.ws_url) as ws:
        for i, query in enumerate(OPERATIONS.values()):
            # Sent as text: the client's json would hit its own recursion limit.
            payload = '{"query": ' + json.dumps(query) + ', "variables": {"m": ' + _nested(950)
            await ws.ws.send(f'{{"id": "{i}", "type": "subscribe", "payload": {payload}}}}}}}')
            payloads, end = await ws.collect(str(i))
            assert end is not None, payloads
            if end["type"] == "error":  # refused before execution
                _refused(end["payload"])
            else:
                assert end["type"] == "complete" and len(payloads) == 1, (payloads, end)
                _refused(payloads[0]["errors"])
