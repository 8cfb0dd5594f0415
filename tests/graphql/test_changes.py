"""What each step changed: `updatedBy`, `changes` and `values(keys:)`, over HTTP on
SQLite and PostgreSQL, on real runs of the offline `code_hero` graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from code_hero.agents.graph import build_code_hero_graph
from code_hero.auth import Caller
from code_hero.persistence.changes import AS_NODE_KEY
from tests.auth.issuer import Issuer
from tests.graphql.clients import data, gql
from tests.graphql.conftest import Server, checkpointer_for
from tests.graphql.test_auth import ALICE_KEY, BOB_KEY, START, client, secured
from tests.graphql.test_queries import start_run

NODE = """id parentId step source namespace updatedBy values
          changes { channel before after appended }"""
HISTORY = """query($t: ID!, $ns: String, $first: Int, $after: String) {
  thread(id: $t) {
    checkpoints(first: $first, after: $after, namespace: $ns) {
      edges { node { %s } } pageInfo { hasNextPage endCursor }
    }
  }
}"""
ONE = """query($t: ID!, $id: ID, $ns: String) {
  checkpoint(threadId: $t, id: $id, namespace: $ns) { %s }
}"""
NAMESPACES = """query($run: ID!) {
  run(id: $run) { events(first: 200) { ... on CheckpointSaved { namespace } } }
}"""


async def history(server: Server, thread_id: str, namespace: str = "") -> list[dict[str, Any]]:
    """The whole history of a namespace, oldest first."""
    body = await gql(server.http, HISTORY % NODE, {"t": thread_id, "ns": namespace, "first": 100})
    return [e["node"] for e in reversed(data(body)["thread"]["checkpoints"]["edges"])]


def replay(parent: dict[str, Any], changes: list[dict[str, Any]]) -> dict[str, Any]:
    """The parent's values with the changes applied."""
    values = dict(parent)
    for change in changes:
        name = change["channel"]
        if change["appended"]:
            assert change["before"] is None
            values[name] = values[name] + change["after"]
        else:
            assert change["before"] == parent.get(name)
            values[name] = change["after"]
    return {k: v for k, v in values.items() if v is not None}


def check_lineage(nodes: list[dict[str, Any]]) -> None:
    """Every checkpoint's changes turn its parent's values into its own, and name only
    channels that differ; a checkpoint without a parent changes every channel."""
    by_id = {n["id"]: n for n in nodes}
    for node in nodes:
        channels = [c["channel"] for c in node["changes"]]
        assert channels == sorted(channels)
        if node["parentId"] is None:
            assert channels == sorted(node["values"])
            assert all(c["before"] is None and not c["appended"] for c in node["changes"])
            continue
        parent = by_id[node["parentId"]]["values"]
        assert replay(parent, node["changes"]) == node["values"]
        for name in set(parent) | set(node["values"]):
            if name not in channels:
                assert parent.get(name) == node["values"].get(name)


def change(node: dict[str, Any], channel: str) -> dict[str, Any]:
    return next(c for c in node["changes"] if c["channel"] == channel)


async def test_a_run_names_its_nodes_and_its_changes(server: Server) -> None:
    run = await start_run(server)
    thread_id = run["threadId"]
    root = await history(server, thread_id)
    assert [n["step"] for n in root] == [-1, 0, 1, 2]
    first, start, supervisor, team = root
    assert first["source"] == "INPUT" and first["parentId"] is None
    assert first["updatedBy"] == [] and first["values"] == {} and first["changes"] == []
    assert start["updatedBy"] == ["__start__"]
    assert change(start, "messages") == {
        "channel": "messages",
        "before": None,
        "after": start["values"]["messages"],
        "appended": False,  # a new channel, not a list that grew
    }
    assert supervisor["updatedBy"] == ["SUPERVISOR"]
    route = change(supervisor, "route")  # a dict: before and after whole
    assert route["appended"] is False and route["after"] == supervisor["values"]["route"]
    assert route["before"] == start["values"].get("route") and route["before"] != route["after"]
    assert "messages" not in [c["channel"] for c in supervisor["changes"]]
    assert team["updatedBy"] == ["development"]
    messages = change(team, "messages")
    old = supervisor["values"]["messages"]
    assert messages["appended"] is True and messages["before"] is None
    assert messages["after"] == team["values"]["messages"][len(old) :]
    assert [m["type"] for m in messages["after"]] == ["ai"]
    check_lineage(root)

    # The team subgraph's namespace: its lead hands over to one expert.
    events = data(await gql(server.http, NAMESPACES, {"run": run["id"]}))["run"]["events"]
    namespaces = {e["namespace"] for e in events if e.get("namespace")}
    (sub,) = namespaces
    assert sub.startswith("development:")
    nodes = await history(server, thread_id, sub)
    assert [n["updatedBy"] for n in nodes] == [
        [],
        ["__start__"],
        ["IMPLEMENTATION"],
        ["FASTAPI_EXPERT"],
    ]
    assert change(nodes[-1], "messages")["appended"] is True
    check_lineage(nodes)

    # A second run: its input checkpoint follows the first run's last one.
    await start_run(server, threadId=thread_id, message="And add a test")
    again = await history(server, thread_id)
    assert len(again) == 8
    second_input = again[4]
    assert second_input["source"] == "INPUT" and second_input["parentId"] == team["id"]
    assert second_input["updatedBy"] == [] and second_input["changes"] == []
    added = change(again[5], "messages")
    assert added["appended"] and [m["content"] for m in added["after"]] == ["And add a test"]
    check_lineage(again)


async def test_values_keys(server: Server) -> None:
    run = await start_run(server)
    body = await gql(
        server.http,
        """query($t: ID!) {
          thread(id: $t) {
            all: values
            some: values(keys: ["route", "messages", "no_such_channel", "route"])
            none: values(keys: [])
            latestCheckpoint { values(keys: ["route"]) everything: values }
          }
          checkpoint(threadId: $t) { values(keys: ["transitions", "nope"]) }
        }""",
        {"t": run["threadId"]},
    )
    thread = data(body)["thread"]
    everything = thread["all"]
    assert {"messages", "route", "transitions"} <= set(everything)
    assert thread["some"] == {"route": everything["route"], "messages": everything["messages"]}
    assert thread["none"] == {}
    assert thread["latestCheckpoint"] == {
        "values": {"route": everything["route"]},
        "everything": everything,
    }
    assert data(body)["checkpoint"] == {"values": {"transitions": everything["transitions"]}}


async def test_a_page_answers_as_each_checkpoint_alone(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await start_run(server)
    thread_id = run["threadId"]
    for message in ("Now a Next.js page", "And document it"):
        await start_run(server, threadId=thread_id, message=message)

    loads: list[list[str]] = []
    get_checkpoints = server.gateway.get_checkpoints

    async def counting(thread: str, ids: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append(list(ids))
        return await get_checkpoints(thread, ids, *args, **kwargs)

    monkeypatch.setattr(server.gateway, "get_checkpoints", counting)
    paged: list[dict[str, Any]] = []
    after = None
    pages = 0
    while True:
        variables = {"t": thread_id, "first": 5, "after": after}
        body = await gql(server.http, HISTORY % NODE, variables)
        page = data(body)["thread"]["checkpoints"]
        paged += [e["node"] for e in page["edges"]]
        pages += 1
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert len(paged) == 12 and pages == 3
    # One load per page, for the oldest one's parent only (the last page's
    # oldest is the first checkpoint: it has none).
    assert loads == [[paged[5]["id"]], [paged[10]["id"]]]

    for node in paged:
        alone = data(await gql(server.http, ONE % NODE, {"t": thread_id, "id": node["id"]}))
        assert alone["checkpoint"] == node
    assert paged[4]["changes"] and paged[4]["updatedBy"]  # a page's oldest has its diff
    check_lineage(paged)


async def test_an_update_names_its_node(server: Server) -> None:
    """An update through LangGraph names its node when the metadata records it."""
    graph = build_code_hero_graph().compile(checkpointer=server.gateway.manager.get_checkpointer())
    fresh = {"configurable": {"thread_id": "edited-from-scratch"}}
    note = AIMessage("Written by hand", id="note-1")
    await graph.aupdate_state(
        {**fresh, "metadata": {AS_NODE_KEY: "SUPERVISOR"}},
        {"messages": [note]},
        as_node="SUPERVISOR",
    )
    (only,) = await history(server, "edited-from-scratch")
    assert only["source"] == "UPDATE" and only["parentId"] is None
    assert only["updatedBy"] == ["SUPERVISOR"]
    assert [c["channel"] for c in only["changes"]] == sorted(only["values"])  # every channel
    check_lineage([only])

    run = await start_run(server)
    config = {"configurable": {"thread_id": run["threadId"]}}
    await graph.aupdate_state(
        {**config, "metadata": {AS_NODE_KEY: "SUPERVISOR"}},
        {"messages": [note]},
        as_node="SUPERVISOR",
    )
    await graph.aupdate_state(
        config, {"messages": [AIMessage("unnamed", id="note-2")]}, as_node="SUPERVISOR"
    )
    nodes = await history(server, run["threadId"])
    named, unnamed = nodes[-2], nodes[-1]
    assert named["source"] == unnamed["source"] == "UPDATE"
    assert named["updatedBy"] == ["SUPERVISOR"]
    assert unnamed["updatedBy"] == []  # LangGraph records no `as_node` of its own
    added = change(named, "messages")
    assert added["appended"] and [m["content"] for m in added["after"]] == ["Written by hand"]
    check_lineage(nodes)


async def test_cost_counts_the_parent_reads(server: Server) -> None:
    query = HISTORY % "id %s"
    plain = await gql(server.http, query % "", {"t": "x", "first": 20})
    diffed = await gql(
        server.http, query % "updatedBy changes { channel }", {"t": "x", "first": 20}
    )
    # updatedBy: 1 read each; changes: its object and 1 read each.
    assert diffed["extensions"]["cost"] - plain["extensions"]["cost"] == 20 * 3


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


async def test_another_users_history_stays_hidden(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, idp: Issuer
) -> None:
    async with secured(checkpointer_for(backend, request, tmp_path), idp) as server:
        async with client(server, ALICE_KEY) as alice, client(server, BOB_KEY) as bob:
            run_input = {"message": "Help me build a FastAPI app", "wait": True}
            run = data(await gql(alice, START, {"input": run_input}))["startRun"]
            thread_id = run["threadId"]
            mine = data(await gql(alice, HISTORY % NODE, {"t": thread_id, "first": 2}))
            edges = mine["thread"]["checkpoints"]["edges"]
            assert [e["node"]["updatedBy"] for e in edges] == [["development"], ["SUPERVISOR"]]
            oldest = edges[-1]["node"]["id"]
            theirs = await gql(bob, ONE % NODE, {"t": thread_id, "id": oldest})
            assert data(theirs) == {"checkpoint": None}
            page = await gql(bob, HISTORY % NODE, {"t": thread_id, "first": 2})
            assert data(page) == {"thread": None}
            # The batch read under `changes` checks the caller as the page does.
            gateway = server.gateway
            assert await gateway.get_checkpoints(thread_id, [oldest], caller=Caller("bob")) == {}
            found = await gateway.get_checkpoints(thread_id, [oldest], caller=Caller("alice"))
            assert list(found) == [oldest]
