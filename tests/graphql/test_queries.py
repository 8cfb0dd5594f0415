"""Every query of the contract, over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest

from tests.graphql.clients import TransportWS, data, gql
from tests.graphql.conftest import Server

START = """
mutation($input: StartRunInput!) {
  startRun(input: $input) { id threadId status }
}
"""


async def start_run(server: Server, **fields: Any) -> dict[str, Any]:
    """startRun with these input fields (wait by default)."""
    run_input = {"message": "Help me build a FastAPI app", "wait": True, **fields}
    body = await gql(server.http, START, {"input": run_input})
    run: dict[str, Any] = data(body)["startRun"]
    return run


def utc(text: str) -> datetime:
    """A served DateTime, checked to be ISO 8601 in UTC."""
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() is not None and parsed.utcoffset() == UTC.utcoffset(parsed)
    return parsed


async def test_health_and_graphs(server: Server) -> None:
    body = await gql(
        server.http,
        """{
          health { status pendingSync uptimeSeconds version
                   backends { role kind healthy active latencyMs lastError checkedAt } }
          graphs { name default agents { name team description } }
        }""",
    )
    result = data(body)
    health = result["health"]
    assert health["status"] == "HEALTHY"
    assert health["pendingSync"] == 0 and health["uptimeSeconds"] >= 0 and health["version"]
    primary = next(b for b in health["backends"] if b["role"] == "primary")
    assert primary["active"] and primary["healthy"]
    assert primary["kind"] in ("SQLITE", "POSTGRES")
    utc(primary["checkedAt"])
    graphs = {g["name"]: g for g in result["graphs"]}
    assert graphs["code_hero"]["default"] and not graphs["slow"]["default"]
    agents = {a["name"]: a for a in graphs["code_hero"]["agents"]}
    assert agents["SUPERVISOR"]["team"] is None
    assert agents["FASTAPI_EXPERT"]["team"] == "development"
    assert [a["name"] for a in graphs["slow"]["agents"]] == ["first", "second", "third"]


async def test_thread_run_and_checkpoint(server: Server) -> None:
    run = await start_run(server, userId="ada", metadata={"source": "test"})
    assert run["status"] == "SUCCESS"
    body = await gql(
        server.http,
        """query($thread: ID!, $run: ID!) {
          thread(id: $thread) {
            id userId status createdAt updatedAt metadata values
            latestCheckpoint { id threadId namespace parentId createdAt step source runId
                               values next metadata pendingWrites { taskId channel value } }
          }
          run(id: $run) {
            id threadId graph status input output error metadata createdAt startedAt finishedAt
            thread { id }
            events(afterSeq: 1, first: 2) { __typename seq runId threadId at }
          }
          latest: checkpoint(threadId: $thread) { id step }
          missingThread: thread(id: "no-such-thread") { id }
          missingRun: run(id: "00000000-0000-4000-8000-000000000000") { id }
          missingCheckpoint: checkpoint(threadId: "no-such-thread") { id }
        }""",
        {"thread": run["threadId"], "run": run["id"]},
    )
    result = data(body)
    thread = result["thread"]
    assert thread["id"] == run["threadId"] and thread["userId"] == "ada"
    assert thread["status"] == "IDLE"
    assert utc(thread["updatedAt"]) >= utc(thread["createdAt"])
    latest = thread["latestCheckpoint"]
    assert latest["threadId"] == run["threadId"] and latest["namespace"] == ""
    assert latest["runId"] == run["id"] and latest["next"] == []
    assert latest["parentId"] and latest["source"] == "LOOP"
    assert thread["values"] == latest["values"]
    messages = thread["values"]["messages"]
    assert messages[0]["content"] == "Help me build a FastAPI app"
    assert messages[-1]["type"] == "ai" and "FastAPI" in messages[-1]["content"]
    assert result["latest"] == {"id": latest["id"], "step": latest["step"]}

    served_run = result["run"]
    assert served_run["graph"] == "code_hero" and served_run["status"] == "SUCCESS"
    assert served_run["metadata"] == {"source": "test"} and served_run["error"] is None
    assert served_run["input"]["messages"][0]["content"] == "Help me build a FastAPI app"
    assert served_run["output"]["messages"][-1]["type"] == "ai"
    assert utc(served_run["createdAt"]) <= utc(served_run["startedAt"])
    assert utc(served_run["startedAt"]) <= utc(served_run["finishedAt"])
    assert served_run["thread"] == {"id": run["threadId"]}
    assert [e["seq"] for e in served_run["events"]] == [2, 3]
    assert served_run["events"][0] == {
        "__typename": "RunStatusChanged",
        "seq": 2,
        "runId": run["id"],
        "threadId": run["threadId"],
        "at": served_run["events"][0]["at"],
    }
    assert result["missingThread"] is None and result["missingRun"] is None
    assert result["missingCheckpoint"] is None

    parent = await gql(
        server.http,
        "query($t: ID!, $id: ID) { checkpoint(threadId: $t, id: $id) { id step } }",
        {"t": run["threadId"], "id": latest["parentId"]},
    )
    assert data(parent)["checkpoint"] == {"id": latest["parentId"], "step": latest["step"] - 1}


async def test_threads_page_to_the_end(server: Server) -> None:
    started = [await start_run(server, userId="pager") for _ in range(5)]
    await start_run(server, userId="someone-else")
    query = """query($after: String) {
      threads(first: 2, after: $after, filter: {userId: "pager", status: IDLE}) {
        edges { cursor node { id updatedAt } }
        pageInfo { hasNextPage endCursor }
      }
    }"""
    seen: list[dict[str, Any]] = []
    after = None
    pages = 0
    while True:
        page = data(await gql(server.http, query, {"after": after}))["threads"]
        pages += 1
        seen += page["edges"]
        assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert pages == 3
    assert sorted(e["node"]["id"] for e in seen) == sorted(r["threadId"] for r in started)
    times = [utc(e["node"]["updatedAt"]) for e in seen]
    assert times == sorted(times, reverse=True)
    # Any edge's cursor continues right after that edge.
    rest = data(await gql(server.http, query, {"after": seen[2]["cursor"]}))["threads"]
    assert [e["node"]["id"] for e in rest["edges"]] == [e["node"]["id"] for e in seen[3:5]]

    filtered = await gql(
        server.http,
        """{ none: threads(filter: {metadata: {team: "nobody"}}) { edges { cursor } }
             later: threads(filter: {updatedAfter: "2999-01-01T00:00:00Z"}) { edges { cursor } }
             earlier: threads(filter: {updatedBefore: "2999-01-01T00:00:00Z", userId: "pager"})
                      { edges { cursor } } }""",
    )
    result = data(filtered)
    assert result["none"]["edges"] == [] and result["later"]["edges"] == []
    assert len(result["earlier"]["edges"]) == 5


async def test_history_page_to_the_end(server: Server) -> None:
    run = await start_run(server)
    query = """query($t: ID!, $after: String) {
      thread(id: $t) {
        checkpoints(first: 3, after: $after) {
          edges { cursor node { id step parentId } }
          pageInfo { hasNextPage endCursor }
        }
        all: checkpoints(first: 100) { edges { node { id } } pageInfo { hasNextPage } }
      }
    }"""
    seen: list[dict[str, Any]] = []
    after = None
    while True:
        thread = data(await gql(server.http, query, {"t": run["threadId"], "after": after}))[
            "thread"
        ]
        page = thread["checkpoints"]
        seen += [e["node"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    everything = [e["node"]["id"] for e in thread["all"]["edges"]]
    assert not thread["all"]["pageInfo"]["hasNextPage"]
    assert [c["id"] for c in seen] == everything and len(everything) > 3
    steps = [c["step"] for c in seen]
    assert steps == sorted(steps, reverse=True) and steps[-1] == -1  # newest first, to the input
    assert all(c["parentId"] == n["id"] for c, n in pairwise(seen))


async def test_runs_page_and_one_thread_query_per_page(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await start_run(server)
    same_thread = [first] + [await start_run(server, threadId=first["threadId"]) for _ in range(2)]
    others = [await start_run(server) for _ in range(2)]

    calls: list[list[str]] = []
    get_threads = server.gateway.get_threads

    async def counting(ids: Any, **kwargs: Any) -> Any:
        calls.append(list(ids))
        return await get_threads(ids, **kwargs)

    monkeypatch.setattr(server.gateway, "get_threads", counting)
    query = """query($after: String) {
      runs(first: 2, after: $after) {
        edges { cursor node { id threadId thread { id status } } }
        pageInfo { hasNextPage endCursor }
      }
    }"""
    seen: list[dict[str, Any]] = []
    after = None
    while True:
        page = data(await gql(server.http, query, {"after": after}))["runs"]
        seen += [e["node"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert [r["id"] for r in seen] == [r["id"] for r in reversed(same_thread + others)]
    assert all(r["thread"]["id"] == r["threadId"] for r in seen)
    assert len(calls) == 3  # one batched look-up per page, not one per run
    assert sorted(calls[1]) == sorted({r["threadId"] for r in seen[2:4]})

    calls.clear()
    body = await gql(
        server.http,
        """query($t: ID!) {
          threads(first: 10) {
            edges { node { id runs(first: 1) { edges { node { thread { id } } } } } }
          }
          filtered: runs(filter: {threadId: $t, status: SUCCESS, graph: "code_hero"}) {
            edges { node { id } } }
          thread(id: $t) {
            runs(first: 2) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } }
            none: runs(status: ERROR) { edges { node { id } } }
          }
        }""",
        {"t": first["threadId"]},
    )
    result = data(body)
    assert calls == [[first["threadId"]]]  # the listed threads primed the loader
    assert [e["node"]["id"] for e in result["filtered"]["edges"]] == [
        r["id"] for r in reversed(same_thread)
    ]
    thread_runs = result["thread"]["runs"]
    assert thread_runs["pageInfo"]["hasNextPage"]
    assert result["thread"]["none"]["edges"] == []
    rest = await gql(
        server.http,
        "query($t: ID!, $a: String) { thread(id: $t) { runs(first: 2, after: $a) "
        "{ edges { node { id } } pageInfo { hasNextPage } } } }",
        {"t": first["threadId"], "a": thread_runs["pageInfo"]["endCursor"]},
    )
    last = data(rest)["thread"]["runs"]
    assert [e["node"]["id"] for e in last["edges"]] == [first["id"]]
    assert not last["pageInfo"]["hasNextPage"]


async def test_loaders_do_not_outlive_an_operation(server: Server) -> None:
    """Two queries on one WebSocket see fresh data: loaders are per operation."""
    run = await start_run(server)
    query = "query($t: ID!) { thread(id: $t) { status } }"
    async with TransportWS.connect(server.ws_url) as ws:
        await ws.subscribe("1", query, {"t": run["threadId"]})
        payloads, end = await ws.collect("1")
        assert payloads == [{"data": {"thread": {"status": "IDLE"}}, "extensions": {"cost": 1}}]
        assert end
        await start_run(server, threadId=run["threadId"], config={"require_approval": True})
        await ws.subscribe("2", query, {"t": run["threadId"]})
        payloads, _ = await ws.collect("2")
        assert [p["data"] for p in payloads] == [{"thread": {"status": "INTERRUPTED"}}]
