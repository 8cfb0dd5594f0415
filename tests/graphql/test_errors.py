"""Every error code a client can meet without auth, with `extensions.code`."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from code_hero.gateway import Gateway, GatewaySettings
from tests.graphql.clients import codes, data, gql
from tests.graphql.conftest import Server, Starter

START = "mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status } }"


async def start_errors(server: Server, run_input: dict[str, Any]) -> list[str]:
    return codes(await gql(server.http, START, {"input": run_input}))


async def test_bad_user_input(server: Server) -> None:
    cases = [
        ("{ nope }", {}),  # validation
        ("query($n: Int!) { threads(first: $n) { edges { cursor } } }", {"n": "ten"}),
        ('{ threads(after: "not-a-cursor") { edges { cursor } } }', {}),
        ('{ runs(after: "not-a-cursor") { edges { cursor } } }', {}),
        ("{ threads(first: 0) { edges { cursor } } }", {}),
        ("{ threads(filter: {metadata: [1, 2]}) { edges { cursor } } }", {}),
        (
            "query($t: DateTime) { threads(filter: {updatedAfter: $t}) { edges { cursor } } }",
            {"t": "2025-01-01T00:00:00"},
        ),  # no timezone
    ]
    for query, variables in cases:
        body = await gql(server.http, query, variables)
        assert body.get("data") is None, query
        assert codes(body) == ["BAD_USER_INPUT"], (query, body)

    run = data(await gql(server.http, START, {"input": {"message": "hello", "wait": True}}))
    thread = run["startRun"]["threadId"]
    history = await gql(
        server.http,
        'query($t: ID!) { thread(id: $t) { checkpoints(after: "not-a-cursor") '
        "{ edges { cursor } } } }",
        {"t": thread},
    )
    assert codes(history) == ["BAD_USER_INPUT"]
    events = await gql(
        server.http,
        "query($r: ID!) { run(id: $r) { events(afterSeq: -1) { seq } } }",
        {"r": run["startRun"]["id"]},
    )
    assert codes(events) == ["BAD_USER_INPUT"]

    for run_input in (
        {},  # none of message, input, resume
        {"message": "hi", "input": {"messages": []}},  # two of them
        {"message": "   "},
        {"message": "hi", "metadata": [1]},
        {"message": "hi", "config": "nope"},
        {"graph": "slow", "input": {"unknown_key": 1}},
        {"input": [1, 2]},
    ):
        assert await start_errors(server, run_input) == ["BAD_USER_INPUT"], run_input


async def test_not_found(server: Server) -> None:
    for query in (
        'mutation { cancelRun(id: "00000000-0000-4000-8000-000000000000") { id } }',
        'mutation { startRun(input: {message: "hi", graph: "no-such-graph"}) { id } }',
        'mutation { startRun(input: {message: "hi", fromCheckpointId: "nope"}) { id } }',
        # A resume on a thread that was never made: NOT_FOUND, as for any unknown thread
        # id (CONFLICT, "not interrupted", is for a thread that exists).
        'mutation { startRun(input: {threadId: "no-such-thread", resume: "yes"}) { id } }',
    ):
        body = await gql(server.http, query)
        assert codes(body) == ["NOT_FOUND"], (query, body)
        assert "Internal" not in body["errors"][0]["message"]


async def test_the_readmes_error_examples_answer_as_shown(server: Server) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    [block] = re.findall(r"```text errors\n(.*?)```", readme, re.S)
    pairs = [p.splitlines() for p in block.strip().split("\n\n")]
    assert len(pairs) == 2
    for query, shown in pairs:
        assert await gql(server.http, query) == json.loads(shown), query


async def test_conflict(server: Server) -> None:
    idle = data(await gql(server.http, START, {"input": {"message": "hello", "wait": True}}))
    thread = idle["startRun"]["threadId"]
    # `resume: null` is given (a null answer): it still needs an INTERRUPTED thread.
    for resume in ({"approved": True}, None):
        errors = await start_errors(server, {"threadId": thread, "resume": resume})
        assert errors == ["CONFLICT"]

    busy = data(
        await gql(
            server.http,
            START,
            {"input": {"graph": "slow", "message": "go", "config": {"delay": 0.5}}},
        )
    )["startRun"]
    body = await gql(
        server.http,
        START,
        {"input": {"threadId": busy["threadId"], "message": "me too", "multitask": "REJECT"}},
    )
    assert codes(body) == ["CONFLICT"]
    assert busy["id"] in body["errors"][0]["message"]
    await gql(server.http, "mutation($id: ID!) { cancelRun(id: $id) { id } }", {"id": busy["id"]})


class BrokenGateway(Gateway):
    """A gateway whose health check fails in a way nobody planned for."""

    async def health(self) -> dict[str, Any]:
        raise RuntimeError("secret detail: password=hunter2")


async def test_internal_errors_are_masked_and_logged(
    start: Starter, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from code_hero.config import create_sqlite_checkpointer

    settings = GatewaySettings(checkpointer=create_sqlite_checkpointer(str(tmp_path / "b.sqlite")))
    async with BrokenGateway(settings) as gateway, start(gateway=gateway) as server:
        with caplog.at_level(logging.ERROR, logger="code_hero.graphql"):
            response = await server.http.post("/graphql", json={"query": "{ health { status } }"})
        assert response.status_code == 200
        body = response.json()
        assert body["errors"] == [
            {
                "message": "Internal server error",
                "locations": [{"line": 1, "column": 3}],
                "path": ["health"],
                "extensions": {"code": "INTERNAL"},
            }
        ]
        assert "hunter2" not in response.text and "Traceback" not in response.text
        logged = [r for r in caplog.records if r.name == "code_hero.graphql"]
        assert logged and logged[0].exc_info is not None
        assert "hunter2" in str(logged[0].exc_info[1])
        # The rest of a query still answers: only the failing field is null.
        partial = await gql(server.http, "{ graphs { name } }")
        assert data(partial)["graphs"]
