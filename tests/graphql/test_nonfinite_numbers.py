"""JSON numbers no database stores as JSON (1e400, NaN, Infinity) in a caller's input.

GraphQL parses `1e400` as a float infinity, and a JSON body may carry `NaN` or
`Infinity` (Python's json module reads them). On SQLite a row holding
`{"x":Infinity}` made every metadata filter of every caller answer INTERNAL
("malformed JSON") from then on; PostgreSQL quietly stored null. Every JSON
argument now refuses them, on every transport: BAD_USER_INPUT, nothing written,
and the filters keep working.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from code_hero.app import create_app
from code_hero.gateway import GatewaySettings
from code_hero.settings import AppSettings
from tests.graphql.clients import TransportWS, codes, data, gql
from tests.graphql.conftest import Server, checkpointer_for, running

RUNS = "{ runs(filter: {metadata: {k: 1}}) { totalCount } }"
THREADS = "{ threads(filter: {metadata: {k: 1}}) { totalCount } }"
STATS = "{ runStats(filter: {metadata: {k: 1}}) { runs } }"
DELETE = "mutation { deleteThreads(filter: {metadata: {k: 1}}) { deleted } }"
START = 'mutation($m: JSON) { startRun(input: {message: "hi", %s: $m, wait: true}) { id } }'

NAN, INF = float("nan"), float("inf")
# Every JSON argument there is (schema.graphql), as a variable or a literal.
WRITES: dict[str, tuple[str, dict[str, Any]]] = {
    "startRun metadata literal 1e400": (
        'mutation { startRun(input: {message: "hi", metadata: {x: 1e400}, wait: true}) { id } }',
        {},
    ),
    "startRun metadata NaN": (START % "metadata", {"m": {"k": 1, "x": NAN}}),
    "startRun config nested": (START % "config", {"m": {"a": {"b": [1, INF]}}}),
    "startRun input": (
        "mutation($m: JSON) { startRun(input: {input: $m, wait: true}) { id } }",
        {"m": {"messages": [], "x": -INF}},
    ),
    "startRun resume": (
        'mutation($m: JSON) { startRun(input: {threadId: "t1", resume: $m}) { id } }',
        {"m": NAN},
    ),
    "createThread metadata": (
        "mutation($m: JSON) { createThread(input: {metadata: $m}) { id } }",
        {"m": {"k": 1, "x": -INF}},
    ),
    "updateThread metadata": (
        'mutation($m: JSON) { updateThread(input: {id: "t1", metadata: $m}) { id } }',
        {"m": {"k": 1, "x": INF}},
    ),
    "updateState values": (
        'mutation($m: JSON!) { updateState(input: {threadId: "t1", values: $m}) { id } }',
        {"m": {"x": NAN}},
    ),
    "threads filter": (
        "query($m: JSON) { threads(filter: {metadata: $m}) { totalCount } }",
        {"m": {"x": INF}},
    ),
    "runs filter": (
        "query($m: JSON) { runs(filter: {metadata: $m}) { totalCount } }",
        {"m": {"x": NAN}},
    ),
}


async def _post(server: Server, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """POST with Python's json, which writes NaN and Infinity as such (as a JS client may)."""
    payload = json.dumps({"query": query, "variables": variables})  # allow_nan: NaN, Infinity
    response = await server.http.post(
        "/graphql", content=payload, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _refused(errors: list[dict[str, Any]]) -> None:
    assert [e["extensions"]["code"] for e in errors] == ["BAD_USER_INPUT"], errors
    assert "must be finite" in errors[0]["message"], errors


async def _filters_work(server: Server) -> None:
    for query in (RUNS, THREADS, STATS, DELETE):
        body = await gql(server.http, query)
        assert "errors" not in body, (query, body["errors"])


async def test_a_non_finite_number_is_refused_and_breaks_no_filter(server: Server) -> None:
    # Every case on one server (a server a case cost the suite about 15 s).
    for name, (write, variables) in WRITES.items():
        written = await _post(server, write, variables)
        _refused(written.get("errors", []))
        assert not written.get("data"), (name, written)
        await _filters_work(server)
        threads = await gql(server.http, "{ threads { totalCount } runs { totalCount } }")
        assert threads["data"] == {"threads": {"totalCount": 0}, "runs": {"totalCount": 0}}, name


async def test_a_non_finite_number_is_refused_over_a_websocket(server: Server) -> None:
    async with TransportWS.connect(server.ws_url) as ws:
        for i, (write, variables) in enumerate(WRITES.values()):
            await ws.subscribe(str(i), write, variables)  # the client's json writes NaN
            payloads, end = await ws.collect(str(i))
            assert end is not None, write
            if end["type"] == "error":  # refused before execution
                errors = end["payload"]
            else:
                assert end["type"] == "complete" and len(payloads) == 1, (payloads, end)
                errors = payloads[0]["errors"]
            _refused(errors)
    await _filters_work(server)


async def test_finite_numbers_still_pass(server: Server) -> None:
    body = await _post(
        server,
        "mutation($m: JSON) { createThread(input: {metadata: $m}) { id metadata } }",
        {"m": {"k": 1, "x": 2.5e-3, "y": -0.5, "z": [1, 2]}},
    )
    assert "errors" not in body, body
    assert body["data"]["createThread"]["metadata"] == {"k": 1, "x": 2.5e-3, "y": -0.5, "z": [1, 2]}
    assert codes(await gql(server.http, THREADS)) == []


ODD_GRAPH = f"{Path(__file__).with_name('odd_numbers_graph.py')}:graph"


@pytest.fixture
async def odd_server(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Server]:
    """The app with a graph that puts NaN and infinities in its state and events."""
    checkpointer = checkpointer_for(backend, request, tmp_path)
    settings = GatewaySettings(checkpointer=checkpointer, graphs={"odd": ODD_GRAPH})
    async with running(create_app(AppSettings(gateway=settings))) as srv:
        yield srv


async def test_a_graphs_own_non_finite_numbers_stay_readable(odd_server: Server) -> None:
    started = await gql(
        odd_server.http,
        'mutation { startRun(input: {graph: "odd", input: {}, metadata: {k: 1}, wait: true}) '
        "{ id status threadId output } }",
    )
    run = started["data"]["startRun"]
    assert run["status"] == "SUCCESS", started
    # Rendered as text, as every checkpoint value is: JSON has no NaN.
    assert run["output"] == {"score": "nan", "scores": ["inf", 1.5]}
    read = await gql(
        odd_server.http,
        "query($r: ID!, $t: ID!) { run(id: $r) { output events { __typename "
        "... on CustomEvent { data } } } thread(id: $t) { values } }",
        {"r": run["id"], "t": run["threadId"]},
    )
    assert "errors" not in read, read
    assert read["data"]["thread"]["values"] == {"score": "nan", "scores": ["inf", 1.5]}
    custom = [e["data"] for e in read["data"]["run"]["events"] if e["__typename"] == "CustomEvent"]
    assert custom == [{"ratio": "-inf"}]
    assert data(await gql(odd_server.http, RUNS)) == {"runs": {"totalCount": 1}}
    await _filters_work(odd_server)
