"""Threads as things over GraphQL: createThread, updateThread and copyThread, their
errors, and who may do what, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from code_hero.auth import AccessSettings
from code_hero.gateway import GatewaySettings
from tests.auth.issuer import Issuer
from tests.graphql.clients import codes, data, gql
from tests.graphql.conftest import SLOW_GRAPH, Server, checkpointer_for
from tests.graphql.test_auth import ALICE_KEY, BOB_KEY, FAST, ROOT_KEY, START, client, secured

THREAD = "id userId status metadata createdAt updatedAt expiresAt"
CREATE = f"mutation($input: CreateThreadInput!) {{ createThread(input: $input) {{ {THREAD} }} }}"
UPDATE = f"mutation($input: UpdateThreadInput!) {{ updateThread(input: $input) {{ {THREAD} }} }}"
COPY = f"mutation($id: ID!) {{ copyThread(id: $id) {{ {THREAD} runs {{ totalCount }} }} }}"
HISTORY = """query($id: ID!) { thread(id: $id) { status values
  checkpoints(first: 100) { totalCount edges { node {
    id parentId step source next metadata values pendingWrites { taskId channel value } } } } } }"""


TEAM_GRAPH = f"{Path(__file__).with_name('team_graph.py')}:graph"


@pytest.fixture
def gateway_settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> GatewaySettings:
    """The `server` fixture's settings, with a graph whose subgraph has a namespace."""
    return GatewaySettings(
        checkpointer=checkpointer_for(backend, request, tmp_path),
        graphs={"slow": SLOW_GRAPH, "team": TEAM_GRAPH},
    )


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


async def create(server: Server, **fields: Any) -> dict[str, Any]:
    thread: dict[str, Any] = data(await gql(server.http, CREATE, {"input": fields}))["createThread"]
    return thread


async def test_create_with_own_id_a_uuid_conflict_and_do_nothing(server: Server) -> None:
    made = await create(server, threadId="tenant:ticket-42", metadata={"team": "a"})
    assert made["id"] == "tenant:ticket-42" and made["metadata"] == {"team": "a"}
    assert made["status"] == "IDLE" and made["expiresAt"] is None  # no server default

    taken = await gql(server.http, CREATE, {"input": {"threadId": "tenant:ticket-42"}})
    assert codes(taken) == ["CONFLICT"]
    same = await create(
        server, threadId="tenant:ticket-42", metadata={"team": "b"}, ifExists="DO_NOTHING"
    )
    assert same["metadata"] == {"team": "a"} and same["createdAt"] == made["createdAt"]

    fresh = await create(server, metadata={"x": 1}, ttlSeconds=3600)
    assert str(uuid.UUID(fresh["id"])) == fresh["id"]
    assert fresh["expiresAt"] is not None and fresh["expiresAt"] > fresh["updatedAt"]

    # A run on the created thread uses it as it is: its metadata stays.
    run = data(await gql(server.http, START, {"input": {**FAST, "threadId": made["id"]}}))
    assert run["startRun"]["status"] == "SUCCESS"
    body = await gql(server.http, "query($id: ID!) { thread(id: $id) { metadata } }", made)
    assert data(body)["thread"]["metadata"] == {"team": "a"}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"threadId": "has space"}, "threadId"),
        ({"threadId": "x" * 129}, "threadId"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"metadata": {"k": "nul\u0000"}}, "metadata"),
        ({"ttlSeconds": 0}, "ttlSeconds"),
        ({"ttlSeconds": 10**9}, "ttlSeconds"),
        ({"userId": "nul\u0000"}, "userId"),
    ],
)
async def test_create_refuses_bad_input(server: Server, fields: dict[str, Any], named: str) -> None:
    body = await gql(server.http, CREATE, {"input": fields})
    assert codes(body) == ["BAD_USER_INPUT"] and named in body["errors"][0]["message"]


async def test_update_merges_removes_and_sets_the_ttl(server: Server) -> None:
    made = await create(server, metadata={"keep": 1, "drop": 2, "nested": {"a": 1}})
    body = await gql(
        server.http,
        UPDATE,
        {"input": {"id": made["id"], "metadata": {"drop": None, "new": "n", "nested": {"b": 2}}}},
    )
    updated = data(body)["updateThread"]
    assert updated["metadata"] == {"keep": 1, "new": "n", "nested": {"b": 2}}
    assert updated["updatedAt"] >= made["updatedAt"] and updated["expiresAt"] is None

    body = await gql(server.http, UPDATE, {"input": {"id": made["id"], "ttlSeconds": 60}})
    timed = data(body)["updateThread"]
    assert timed["metadata"] == updated["metadata"]  # no metadata given: unchanged
    assert timed["expiresAt"] is not None and timed["expiresAt"] > timed["updatedAt"]

    missing = await gql(server.http, UPDATE, {"input": {"id": "nobody", "metadata": {}}})
    assert codes(missing) == ["NOT_FOUND"]
    bad = await gql(server.http, UPDATE, {"input": {"id": made["id"], "ttlSeconds": -1}})
    assert codes(bad) == ["BAD_USER_INPUT"] and "ttlSeconds" in bad["errors"][0]["message"]
    bad = await gql(server.http, UPDATE, {"input": {"id": made["id"], "metadata": "text"}})
    assert codes(bad) == ["BAD_USER_INPUT"] and "metadata" in bad["errors"][0]["message"]


async def test_copy_has_the_same_history_no_runs_and_continues(server: Server) -> None:
    # The built-in graph asks for approval: an interrupted thread, its interrupt a
    # pending write, its agents in subgraph namespaces.
    start = {"message": "build a fastapi app", "config": {"require_approval": True}, "wait": True}
    asked = data(await gql(server.http, START, {"input": start}))["startRun"]
    assert asked["status"] == "INTERRUPTED"
    await gql(
        server.http,
        UPDATE,
        {"input": {"id": asked["threadId"], "metadata": {"label": "original"}}},
    )

    copy = data(await gql(server.http, COPY, {"id": asked["threadId"]}))["copyThread"]
    assert copy["id"] != asked["threadId"] and copy["runs"]["totalCount"] == 0
    assert copy["metadata"]["label"] == "original" and copy["status"] == "INTERRUPTED"

    source = data(await gql(server.http, HISTORY, {"id": asked["threadId"]}))["thread"]
    copied = data(await gql(server.http, HISTORY, {"id": copy["id"]}))["thread"]
    assert copied["checkpoints"] == source["checkpoints"] and copied["values"] == source["values"]
    assert any(e["node"]["pendingWrites"] for e in copied["checkpoints"]["edges"]), (
        "the interrupt's pending write is copied"
    )

    # The copy resumes from its own state; the original still waits.
    resume = {"threadId": copy["id"], "resume": {"approved": True}, "wait": True}
    resumed = data(await gql(server.http, START, {"input": resume}))["startRun"]
    assert resumed["status"] == "SUCCESS" and resumed["threadId"] == copy["id"]
    after = data(await gql(server.http, HISTORY, {"id": asked["threadId"]}))["thread"]
    assert after["status"] == "INTERRUPTED" and after["checkpoints"] == source["checkpoints"]

    # Every namespace, as the saver holds them: a graph with a subgraph.
    team = {"graph": "team", "message": "hi", "wait": True}
    teamed = data(await gql(server.http, START, {"input": team}))["startRun"]
    team_copy = data(await gql(server.http, COPY, {"id": teamed["threadId"]}))["copyThread"]
    router = server.gateway.manager.router

    async def namespaces(thread_id: str) -> list[tuple[str, str, Any, Any]]:
        items = await router.read_list({"configurable": {"thread_id": thread_id}})
        return sorted(
            (
                t.config["configurable"]["checkpoint_ns"],
                t.checkpoint["id"],
                t.checkpoint["channel_values"].get("steps"),
                (t.parent_config or {}).get("configurable", {}).get("checkpoint_id"),
            )
            for t in items
        )

    original = await namespaces(teamed["threadId"])
    assert any(ns for ns, *_ in original), "subgraph namespaces exist"
    assert await namespaces(team_copy["id"]) == original
    again = {**team, "threadId": team_copy["id"]}
    steps = data(await gql(server.http, START, {"input": again}))["startRun"]
    assert steps["status"] == "SUCCESS"
    copied_values = data(await gql(server.http, HISTORY, {"id": team_copy["id"]}))["thread"]
    before = data(await gql(server.http, HISTORY, {"id": teamed["threadId"]}))["thread"]
    # The run on the copy went on from the copied state: its steps come after those.
    done = before["values"]["steps"]
    assert copied_values["values"]["steps"][: len(done)] == done
    assert len(copied_values["values"]["steps"]) > len(done)

    missing = await gql(server.http, COPY, {"id": "nobody"})
    assert codes(missing) == ["NOT_FOUND"]
    bad = await gql(server.http, COPY, {"id": "a/b"})
    assert codes(bad) == ["BAD_USER_INPUT"] and "id" in bad["errors"][0]["message"]


async def test_owners_edit_only_their_own_threads(
    backend: str, request: pytest.FixtureRequest, tmp_path: Any, idp: Issuer
) -> None:
    checkpointer = checkpointer_for(backend, request, tmp_path)
    async with (
        secured(checkpointer, idp, access=AccessSettings()) as server,
        client(server, ALICE_KEY) as alice,
        client(server, BOB_KEY) as bob,
        client(server, ROOT_KEY) as root,
    ):
        mine = data(await gql(alice, CREATE, {"input": {"threadId": "alice-1"}}))
        assert mine["createThread"]["userId"] == "alice"
        forged = await gql(bob, CREATE, {"input": {"userId": "alice"}})
        assert codes(forged) == ["FORBIDDEN"]
        for_bob = data(await gql(root, CREATE, {"input": {"userId": "bob"}}))["createThread"]
        assert for_bob["userId"] == "bob"

        # Another user's thread looks missing, and its id stays taken.
        assert codes(await gql(bob, UPDATE, {"input": {"id": "alice-1", "metadata": {}}})) == [
            "NOT_FOUND"
        ]
        assert codes(await gql(bob, COPY, {"id": "alice-1"})) == ["NOT_FOUND"]
        again = {"threadId": "alice-1", "ifExists": "DO_NOTHING"}
        assert codes(await gql(bob, CREATE, {"input": again})) == ["CONFLICT"]

        copied = data(await gql(alice, COPY, {"id": "alice-1"}))["copyThread"]
        assert copied["userId"] == "alice"
        edited = await gql(root, UPDATE, {"input": {"id": "alice-1", "metadata": {"by": "root"}}})
        assert data(edited)["updateThread"]["metadata"] == {"by": "root"}
