"""Dashboards: `totalCount` on every connection, and listings in a chosen order.

Threads and runs are stored as given (times chosen, ties included) through the
gateway's registry, then read back over GraphQL on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from code_hero.app import create_app
from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.persistence.records import (
    Registry,
    RunRecord,
    RunStatus,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.settings import AppSettings
from tests.auth.issuer import Issuer
from tests.conftest import PG_ADMIN_URL
from tests.faults import BlackHoleProxy, with_port
from tests.graphql.clients import codes, data, gql
from tests.graphql.conftest import SLOW_GRAPH, Server, checkpointer_for, running
from tests.graphql.test_auth import (
    ALICE_KEY,
    BOB_KEY,
    FAST,
    ROOT_KEY,
    START,
    client,
    secured,
)
from tests.graphql.test_outage import wait_for_status

THREADS = """query($first: Int, $after: String, $filter: ThreadFilter, $order: ThreadSort) {
  threads(first: $first, after: $after, filter: $filter, orderBy: $order) {
    edges { node { id } } pageInfo { hasNextPage endCursor } %s
  }
}"""
RUNS = """query($first: Int, $after: String, $filter: RunFilter, $order: RunSort) {
  runs(first: $first, after: $after, filter: $filter, orderBy: $order) {
    edges { node { id } } pageInfo { hasNextPage endCursor } %s
  }
}"""
CHECKPOINTS = """query($id: ID!, $ns: String) {
  thread(id: $id) { checkpoints(first: 100, namespace: $ns) { edges { node { id } } %s } }
}"""


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432


def at(seconds: int) -> datetime:
    return datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


async def put_thread(
    registry: Registry,
    created: int,
    updated: int,
    *,
    user: str | None = None,
    status: ThreadStatus = ThreadStatus.IDLE,
    metadata: dict[str, Any] | None = None,
) -> str:
    thread_id = str(uuid.uuid4())
    await registry.put_thread(
        ThreadRecord(
            thread_id=thread_id,
            user_id=user,
            status=status,
            metadata=metadata or {},
            created_at=at(created),
            updated_at=at(updated),
        )
    )
    return thread_id


async def put_run(registry: Registry, thread_id: str, created: int, graph: str = "g") -> str:
    run_id = str(uuid.uuid4())
    await registry.put_run(
        RunRecord(
            run_id=run_id,
            thread_id=thread_id,
            graph=graph,
            status=RunStatus.SUCCESS,
            created_at=at(created),
        )
    )
    return run_id


async def count(http: httpx.AsyncClient, query: str, field: str, **variables: Any) -> int:
    body = data(await gql(http, query % "totalCount", variables))
    result: int = body[field]["totalCount"]
    return result


async def walk(http: httpx.AsyncClient, query: str, field: str, **variables: Any) -> list[str]:
    """Every id of a listing, two per page, following endCursor."""
    ids: list[str] = []
    after = None
    while True:
        body = data(await gql(http, query % "", {**variables, "first": 2, "after": after}))
        page = body[field]
        ids.extend(e["node"]["id"] for e in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            return ids
        after = page["pageInfo"]["endCursor"]


# ------------------------------------------------------------------ totalCount


async def test_total_count_counts_every_match_with_and_without_filters(server: Server) -> None:
    registry = server.gateway.manager.registry
    team = [await put_thread(registry, i, i, metadata={"team": "a"}) for i in range(4)]
    busy = [await put_thread(registry, 10 + i, 10 + i, status=ThreadStatus.BUSY) for i in range(3)]
    for i in range(5):
        await put_run(registry, team[0], i, graph="x" if i < 3 else "g")
    await put_run(registry, busy[0], 9)
    http = server.http

    assert await count(http, THREADS, "threads", first=1) == 7
    assert await count(http, THREADS, "threads", filter={"metadata": {"team": "a"}}) == 4
    assert await count(http, THREADS, "threads", filter={"status": "BUSY"}) == 3
    assert await count(http, THREADS, "threads", filter={"metadata": {"team": "b"}}) == 0
    assert await count(http, RUNS, "runs", first=1) == 6
    assert await count(http, RUNS, "runs", filter={"threadId": team[0]}) == 5
    assert await count(http, RUNS, "runs", filter={"graph": "x"}) == 3
    assert await count(http, RUNS, "runs", filter={"threadId": busy[1]}) == 0
    # Thread.runs counts the thread's runs.
    body = data(
        await gql(
            http,
            "query($id: ID!) { thread(id: $id) { runs(first: 1, status: SUCCESS) "
            "{ totalCount } } }",
            {"id": team[0]},
        )
    )
    assert body["thread"]["runs"]["totalCount"] == 5


async def test_checkpoint_total_count_is_the_namespace_history(server: Server) -> None:
    started = data(await gql(server.http, START, {"input": FAST}))["startRun"]
    thread_id = started["threadId"]
    body = data(await gql(server.http, CHECKPOINTS % "totalCount", {"id": thread_id, "ns": ""}))
    history = body["thread"]["checkpoints"]
    assert history["totalCount"] == len(history["edges"]) > 1
    other = {"id": thread_id, "ns": "no-such-subgraph"}
    body = data(await gql(server.http, CHECKPOINTS % "totalCount", other))
    assert body["thread"]["checkpoints"]["totalCount"] == 0


async def test_a_page_without_total_count_makes_no_count_query(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = server.gateway.manager
    registry = manager.registry
    thread_id = await put_thread(registry, 0, 0)
    await put_run(registry, thread_id, 0)
    calls: list[str] = []

    def spy(owner: Any, name: str) -> None:
        real: Callable[..., Any] = getattr(owner, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return await real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    spy(registry, "count_threads")
    spy(registry, "count_runs")
    spy(manager, "count_checkpoints")
    plain = [
        (THREADS % "", {}),
        (RUNS % "", {}),
        (CHECKPOINTS % "", {"id": thread_id}),
    ]
    for query, variables in plain:
        data(await gql(server.http, query, variables))
    assert calls == []
    counted = [
        (THREADS % "totalCount", {}),
        (RUNS % "totalCount", {}),
        (CHECKPOINTS % "totalCount", {"id": thread_id}),
    ]
    for query, variables in counted:
        data(await gql(server.http, query, variables))
    assert calls == ["count_threads", "count_runs", "count_checkpoints"]


async def test_each_user_counts_only_their_own(
    backend: str, idp: Issuer, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with secured(checkpointer_for(backend, request, tmp_path), idp) as server:
        registry = server.gateway.manager.registry
        owned: dict[str | None, list[str]] = {"alice": [], "bob": [], None: []}
        for i, user in enumerate(["alice"] * 2 + ["bob"] * 4 + [None]):
            owned[user].append(await put_thread(registry, i, i, user=user))
        for thread_id in owned["alice"]:
            await put_run(registry, thread_id, 1)
        for thread_id in owned["bob"]:
            for k in range(3):
                await put_run(registry, thread_id, k)
        expected = {ALICE_KEY: (2, 2), BOB_KEY: (4, 12), ROOT_KEY: (7, 14)}
        for key, (threads, runs) in expected.items():
            async with client(server, key) as http:
                assert await count(http, THREADS, "threads") == threads
                assert await count(http, RUNS, "runs") == runs
                assert await count(http, RUNS, "runs", filter={"status": "SUCCESS"}) == runs
        async with client(server, ALICE_KEY) as http:
            # Another user's thread named in a filter counts nothing.
            assert await count(http, RUNS, "runs", filter={"threadId": owned["bob"][0]}) == 0
            body = await gql(http, THREADS % "totalCount", {"filter": {"userId": "bob"}})
            assert codes(body) == ["FORBIDDEN"]


# ------------------------------------------------------------------ orderBy


async def test_every_thread_order_pages_each_thread_once_in_order(server: Server) -> None:
    registry = server.gateway.manager.registry
    # Created and updated orders differ; pairs share a time, so ids break the ties.
    times = [(0, 50), (0, 40), (5, 40), (5, 10), (7, 60), (9, 60), (9, 20)]
    threads = {await put_thread(registry, c, u): (c, u) for c, u in times}
    for field, index in (("CREATED_AT", 0), ("UPDATED_AT", 1)):
        for direction in ("ASC", "DESC"):
            expected = sorted(
                threads, key=lambda t: (threads[t][index], t), reverse=direction == "DESC"
            )
            order = {"field": field, "direction": direction}
            assert await walk(server.http, THREADS, "threads", order=order) == expected, order
    default = sorted(threads, key=lambda t: (threads[t][1], t), reverse=True)
    assert await walk(server.http, THREADS, "threads") == default
    assert await walk(server.http, THREADS, "threads", order={}) == default


async def test_every_run_order_pages_each_run_once_in_order(server: Server) -> None:
    registry = server.gateway.manager.registry
    a, b = await put_thread(registry, 0, 0), await put_thread(registry, 0, 0)
    created = [3, 1, 1, 8, 3, 3, 0]
    runs = {await put_run(registry, (a, b)[i % 2], c): c for i, c in enumerate(created)}
    for direction in ("ASC", "DESC"):
        expected = sorted(runs, key=lambda r: (runs[r], r), reverse=direction == "DESC")
        order = {"field": "CREATED_AT", "direction": direction}
        assert await walk(server.http, RUNS, "runs", order=order) == expected, order
        mine = [r for r in expected if list(runs).index(r) % 2 == 0]
        assert await walk(server.http, RUNS, "runs", order=order, filter={"threadId": a}) == mine
    newest = sorted(runs, key=lambda r: (runs[r], r), reverse=True)
    assert await walk(server.http, RUNS, "runs") == newest


async def test_a_cursor_of_another_order_is_bad_user_input(server: Server) -> None:
    registry = server.gateway.manager.registry
    thread_id = await put_thread(registry, 0, 0)
    for i in range(3):
        await put_thread(registry, i, 10 - i)
        await put_run(registry, thread_id, i)

    async def cursor(query: str, field: str, order: dict[str, str] | None) -> str:
        body = data(await gql(server.http, query % "", {"first": 1, "order": order}))
        end: str = body[field]["pageInfo"]["endCursor"]
        return end

    orders = [
        {"field": f, "direction": d} for f in ("UPDATED_AT", "CREATED_AT") for d in ("ASC", "DESC")
    ]
    for made in orders:
        after = await cursor(THREADS, "threads", made)
        for used in orders:
            body = await gql(server.http, THREADS % "", {"first": 1, "after": after, "order": used})
            assert codes(body) == ([] if used == made else ["BAD_USER_INPUT"]), (made, used)
    ascending = await cursor(RUNS, "runs", {"direction": "ASC"})
    assert codes(await gql(server.http, RUNS % "", {"after": ascending})) == ["BAD_USER_INPUT"]
    newest = await cursor(RUNS, "runs", None)
    body = await gql(server.http, RUNS % "", {"after": newest, "order": {"direction": "ASC"}})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert codes(await gql(server.http, RUNS % "", {"after": newest})) == []
    # A thread cursor is no run cursor, whatever the order.
    thread_cursor = await cursor(THREADS, "threads", None)
    assert codes(await gql(server.http, RUNS % "", {"after": thread_cursor})) == ["BAD_USER_INPUT"]


# ------------------------------------------------------------------ during an outage


@pytest.fixture
async def outage_server(
    pg_database: str, tmp_path: Path
) -> AsyncIterator[tuple[Server, BlackHoleProxy]]:
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        config = create_postgres_checkpointer(
            with_port(pg_database, proxy.port), pool_timeout=1, health_check_interval=0.2
        )
        settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_GRAPH})
        async with running(create_app(AppSettings(gateway=settings))) as server:
            yield server, proxy


@pytest.mark.postgres
async def test_counts_during_an_outage_are_the_fallbacks_as_listings_are(
    outage_server: tuple[Server, BlackHoleProxy],
) -> None:
    server, proxy = outage_server
    old = data(await gql(server.http, START, {"input": FAST}))["startRun"]["threadId"]
    proxy.refuse()
    await wait_for_status(server, "DEGRADED")
    new = data(await gql(server.http, START, {"input": FAST}))["startRun"]["threadId"]

    assert await count(server.http, THREADS, "threads") == 1
    assert await count(server.http, RUNS, "runs") == 1
    assert await count(server.http, RUNS, "runs", filter={"threadId": new}) == 1
    body = data(await gql(server.http, CHECKPOINTS % "totalCount", {"id": new, "ns": ""}))
    history = body["thread"]["checkpoints"]
    assert history["totalCount"] == len(history["edges"]) > 1
    for query, variables in (
        (RUNS % "totalCount", {"filter": {"threadId": old}}),
        ("query($id: ID!) { thread(id: $id) { id } }", {"id": old}),
    ):
        assert codes(await gql(server.http, query, variables)) == ["UNAVAILABLE"]

    proxy.forward()
    await wait_for_status(server, "HEALTHY")
    assert await count(server.http, THREADS, "threads") == 2
    assert await count(server.http, RUNS, "runs") == 2


async def test_a_total_count_costs_one_query_where_it_is_asked(server: Server) -> None:
    plain = (
        "{ threads(first: 5) { edges { node { runs(first: 2) { pageInfo { hasNextPage } } } } } }"
    )
    counted = (
        "{ threads(first: 5) { totalCount edges { node { runs(first: 2) "
        "{ totalCount pageInfo { hasNextPage } } } } } }"
    )
    without = (await gql(server.http, plain))["extensions"]["cost"]
    assert (await gql(server.http, counted))["extensions"]["cost"] == without + 1 + 5
