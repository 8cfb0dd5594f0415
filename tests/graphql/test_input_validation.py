"""Ids and run config checked at the edge, on SQLite and PostgreSQL, over HTTP and WebSocket.

A malformed thread, run or checkpoint id is BAD_USER_INPUT naming the argument,
before anything is read or written; `config` may set the graph's own
configurable keys only, and a recursion_limit up to the server's maximum.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from typing import Any

import psycopg
import pytest

from code_hero.config import CheckpointerConfig
from tests.graphql.clients import TransportWS, codes, data, gql
from tests.graphql.conftest import Server, Starter

START = "mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status error } }"
THREAD_RULE = "must be 1-128 characters of A-Z a-z 0-9 . _ : -"
RUN_RULE = "must be a run id: a UUID"
BAD_THREAD_IDS = ["", "a b", "a\x00b", "x" * 129, "x" * 10_000, "caf\u00e9", "a/b", "a\nb", "t'"]
BAD_RUN_IDS = ["", "nope", "a b", str(uuid.uuid4()) + "0", "a\x00b", "x" * 10_000]
MISSING_RUN = str(uuid.uuid4())

# (operation, the variable holding the id, the argument the error names, id kind)
OPERATIONS: list[tuple[str, str, str, str]] = [
    ("query($v: ID!) { thread(id: $v) { id } }", "v", "id", "thread"),
    ("query($v: ID!) { checkpoint(threadId: $v) { id } }", "v", "threadId", "thread"),
    ('query($v: ID!) { checkpoint(threadId: "t", id: $v) { id } }', "v", "id", "checkpoint"),
    ("query($v: ID!) { run(id: $v) { id } }", "v", "id", "run"),
    (
        "query($v: ID!) { runs(filter: {threadId: $v}) { edges { cursor } } }",
        "v",
        "threadId",
        "thread",
    ),
    ("mutation($v: ID!) { cancelRun(id: $v) { id } }", "v", "id", "run"),
    ("mutation($v: ID!) { deleteRun(id: $v) { deleted } }", "v", "id", "run"),
    ("mutation($v: ID!) { deleteThread(id: $v) { deleted } }", "v", "id", "thread"),
    (
        'mutation($v: ID!) { startRun(input: {threadId: $v, message: "hi"}) { id } }',
        "v",
        "threadId",
        "thread",
    ),
    (
        'mutation($v: ID!) { startRun(input: {message: "hi", fromCheckpointId: $v}) { id } }',
        "v",
        "fromCheckpointId",
        "thread",
    ),
]
SUBSCRIPTIONS = [
    ("subscription($v: ID!) { runEvents(runId: $v) { seq } }", "runId", "run"),
    ("subscription($v: ID!) { threadEvents(threadId: $v) { seq } }", "threadId", "thread"),
]


def bad_ids(kind: str) -> list[str]:
    if kind == "checkpoint":  # checkpoint(id: "") is the latest, as null is
        return [i for i in BAD_THREAD_IDS if i]
    return BAD_THREAD_IDS if kind == "thread" else BAD_RUN_IDS


def stored_rows(config: CheckpointerConfig) -> dict[str, int]:
    """Rows of the checkpoint and registry tables, read straight from the database."""
    tables = ["checkpoints", "code_hero_threads", "code_hero_runs", "code_hero_run_events"]
    if config.kind == "postgres":
        with psycopg.connect(str(config.connection_string)) as conn:
            return {
                t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                for t in tables
            }
    with sqlite3.connect(str(config.database_path)) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


async def test_malformed_ids_are_bad_user_input_naming_the_argument(server: Server) -> None:
    before = stored_rows(server.gateway.settings.checkpointer)
    for query, variable, argument, kind in OPERATIONS:
        for bad in bad_ids(kind):
            body = await gql(server.http, query, {variable: bad})
            assert codes(body) == ["BAD_USER_INPUT"], (query, bad, body)
            rule = RUN_RULE if kind == "run" else THREAD_RULE
            assert body["errors"][0]["message"].startswith(f"{argument} {rule}"), (query, body)
    assert stored_rows(server.gateway.settings.checkpointer) == before


async def test_malformed_ids_in_subscriptions(server: Server) -> None:
    async with TransportWS.connect(server.ws_url) as ws:
        for n, (query, argument, kind) in enumerate(SUBSCRIPTIONS):
            for m, bad in enumerate(bad_ids(kind)):
                op = f"{n}-{m}"
                await ws.subscribe(op, query, {"v": bad})
                payloads, end = await ws.collect(op)
                assert payloads == [] and end is not None and end["type"] == "error", end
                [error] = end["payload"]
                assert error["extensions"]["code"] == "BAD_USER_INPUT", (bad, error)
                assert error["message"].startswith(f"{argument} must be"), error


async def test_a_nul_or_overlong_thread_id_writes_nothing(server: Server) -> None:
    """On PostgreSQL both used to answer INTERNAL; the long one was half written."""
    config = server.gateway.settings.checkpointer
    for bad in ("a\x00b", "x" * 10_000, "has space"):
        body = await gql(server.http, START, {"input": {"threadId": bad, "message": "hi"}})
        assert codes(body) == ["BAD_USER_INPUT"], body
        body = await gql(
            server.http, START, {"input": {"threadId": bad, "message": "hi", "wait": True}}
        )
        assert codes(body) == ["BAD_USER_INPUT"], body
    assert stored_rows(config) == {
        "checkpoints": 0,
        "code_hero_threads": 0,
        "code_hero_runs": 0,
        "code_hero_run_events": 0,
    }
    found = await gql(server.http, "query($t: ID!) { thread(id: $t) { id } }", {"t": "x" * 128})
    assert data(found) == {"thread": None}


async def test_ids_within_the_rule_work(server: Server) -> None:
    longest = ("Az09._:-" * 16)[:128]
    run = data(
        await gql(
            server.http, START, {"input": {"threadId": longest, "message": "hi", "wait": True}}
        )
    )["startRun"]
    assert run["threadId"] == longest and run["status"] == "SUCCESS", run
    thread = await gql(server.http, "query($t: ID!) { thread(id: $t) { id } }", {"t": longest})
    assert data(thread) == {"thread": {"id": longest}}
    # A UUID is case-insensitive: an upper-case run id names the same run.
    upper = await gql(
        server.http, "query($r: ID!) { run(id: $r) { id } }", {"r": run["id"].upper()}
    )
    assert data(upper) == {"run": {"id": run["id"]}}
    missing = await gql(server.http, "query($r: ID!) { run(id: $r) { id } }", {"r": MISSING_RUN})
    assert data(missing) == {"run": None}
    cancel = await gql(
        server.http, "mutation($r: ID!) { cancelRun(id: $r) { id } }", {"r": MISSING_RUN}
    )
    assert codes(cancel) == ["NOT_FOUND"]


# ------------------------------------------------------------------ text
TEXT_CASES: list[tuple[str, str, Any]] = [
    # (the argument the error names, operation, variables with {BAD} where the text goes)
    ("message", START, {"input": {"message": "{BAD}"}}),
    ("message", START, {"input": {"message": "{BAD}", "wait": True}}),
    ("input", START, {"input": {"graph": "slow", "input": {"steps": ["{BAD}"]}}}),
    ("metadata", START, {"input": {"message": "hi", "metadata": {"k": "{BAD}"}}}),
    ("metadata", START, {"input": {"message": "hi", "metadata": {"{BAD}": 1}}}),
    ("config", START, {"input": {"message": "hi", "config": {"k": ["{BAD}"]}}}),
    ("userId", START, {"input": {"message": "hi", "userId": "{BAD}"}}),
    ("namespace", 'query($v: String) { checkpoint(threadId: "t", namespace: $v) { id } }', {}),
    (
        "filter.userId",
        "query($v: String) { threads(filter: {userId: $v}) { edges { cursor } } }",
        {},
    ),
    (
        "filter.metadata",
        "query($v: JSON) { threads(filter: {metadata: $v}) { edges { cursor } } }",
        {"v": {"k": "{BAD}"}},
    ),
    ("filter.userId", "query($v: String) { runs(filter: {userId: $v}) { edges { cursor } } }", {}),
    ("filter.graph", "query($v: String) { runs(filter: {graph: $v}) { edges { cursor } } }", {}),
]


def with_text(variables: Any, bad: str) -> Any:
    if variables == {}:
        return {"v": bad}
    if isinstance(variables, dict):
        return {with_text(k, bad): with_text(v, bad) for k, v in variables.items()}
    if isinstance(variables, list):
        return [with_text(v, bad) for v in variables]
    return bad if variables == "{BAD}" else variables


async def test_text_a_database_cannot_store_is_bad_user_input(server: Server) -> None:
    """A NUL (PostgreSQL refuses it) or a lone surrogate (no UTF-8 at all) used to answer
    INTERNAL, on SQLite as well for surrogates; refused before anything is written."""
    # Sent as ASCII JSON: "\u0000" and "\ud800" escapes, as a hostile client would.
    for bad in ("a\x00b", "a\ud800b"):
        for argument, query, variables in TEXT_CASES:
            body = json.dumps({"query": query, "variables": with_text(variables, bad)})
            response = await server.http.post(
                "/graphql", content=body, headers={"content-type": "application/json"}
            )
            answer = response.json()
            assert codes(answer) == ["BAD_USER_INPUT"], (argument, query, answer)
            message = answer["errors"][0]["message"]
            assert message == (
                f"{argument} may not contain NUL (U+0000) or lone surrogate characters"
            ), answer
    assert stored_rows(server.gateway.settings.checkpointer) == dict.fromkeys(
        ["checkpoints", "code_hero_threads", "code_hero_runs", "code_hero_run_events"], 0
    )


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "config",
    [
        {"thread_id": "someone-elses"},
        {"checkpoint_id": "1ef00000-0000-6000-8000-000000000000"},
        {"checkpoint_ns": "x"},
        {"checkpoint_map": {}},
        {"run_id": "x"},
        {"user_id": "admin"},
        {"__pregel_checkpointer": None},
        {"__anything": 1},
    ],
)
async def test_config_may_not_set_reserved_keys(server: Server, config: dict[str, Any]) -> None:
    body = await gql(server.http, START, {"input": {"message": "hi", "config": config}})
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["message"].startswith(f"config may not set {next(iter(config))}")
    assert stored_rows(server.gateway.settings.checkpointer)["code_hero_runs"] == 0


async def test_recursion_limit_up_to_the_server_maximum(start: Starter) -> None:
    async with start(gateway_fields={"max_recursion_limit": 5}) as server:
        for limit in (6, 0, -1, 1000, "3", 2.5, True, None, [3]):
            body = await gql(
                server.http,
                START,
                {"input": {"graph": "slow", "input": {}, "config": {"recursion_limit": limit}}},
            )
            assert codes(body) == ["BAD_USER_INPUT"], (limit, body)
            assert body["errors"][0]["message"].startswith(
                "config.recursion_limit must be a whole number between 1 and 5"
            )
        # Within the maximum it applies: the slow graph takes 3 steps.
        for limit, status in ((5, "SUCCESS"), (2, "ERROR")):
            config = {"recursion_limit": limit, "delay": 0}
            run = data(
                await gql(
                    server.http,
                    START,
                    {"input": {"graph": "slow", "input": {}, "config": config, "wait": True}},
                )
            )["startRun"]
            assert run["status"] == status, run
        assert "GraphRecursionError" in run["error"]


# ------------------------------------------------------------------ ids from before the rule
@pytest.mark.postgres
async def test_a_thread_id_with_a_space_still_relays_between_replicas(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A thread written before the id rule (a space in its id): its run's events reach a
    subscriber on another replica, through the NOTIFY payload that names the thread."""
    from code_hero.config import create_postgres_checkpointer
    from code_hero.gateway import Gateway, GatewaySettings
    from code_hero.runs.executor import StartRun
    from tests.graphql.conftest import SLOW_GRAPH

    def replica(slots: int) -> Gateway:
        config = create_postgres_checkpointer(pg_database)
        return Gateway(
            GatewaySettings(
                checkpointer=config, graphs={"slow": SLOW_GRAPH}, max_concurrent_runs=slots
            )
        )

    async with replica(4) as runner, replica(0) as watcher:
        # The executor below the gateway takes what older gateways admitted.
        run = await runner.executor.start(
            StartRun(
                thread_id="legacy thread 1",
                graph="slow",
                input={},
                config={"delay": 0.2},
            )
        )
        seen = []
        with caplog.at_level(logging.WARNING, logger="code_hero.runs.pgbus"):
            async with asyncio.timeout(60):  # a hang guard, not a measurement
                async for event in await watcher.follow_run(run.run_id):
                    seen.append(event)
        assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
        assert seen[-1].payload["status"] == "SUCCESS"
        assert {e.thread_id for e in seen} == {"legacy thread 1"}
        assert "malformed event notification" not in caplog.text
