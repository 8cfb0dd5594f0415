"""The query cost limit: every document priced before it runs, over HTTP and WebSocket.

The costs asserted are the model's (see code_hero.schema.cost): one per
object the answer may hold, pages full.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import get_introspection_query

from code_hero.app import create_app
from code_hero.auth import AccessSettings, RateLimit
from code_hero.schema import cost as pricing
from code_hero.schema import extensions
from code_hero.settings import DEFAULT_MAX_COST, Limits, settings_from_env
from tests.graphql.clients import TransportWS, codes, data, gql, until_finished
from tests.graphql.conftest import Server, Starter, running

README = Path(__file__).parents[2] / "README.md"

# The query: within the depth limit, ten million events.
TEN_MILLION = (
    "{ threads(first: 100) { edges { node { runs(first: 100) { edges { node "
    "{ events(first: 1000) { seq } } } } } } } }"
)
START = """mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status } }"""
FAST = {"graph": "slow", "message": "hi", "config": {"delay": 0}, "wait": True}

# A dashboard's pages, with what each costs.
DASHBOARD = [
    (
        "{ threads(first: 20) { edges { cursor node { id userId status updatedAt metadata "
        "runs(first: 5) { edges { node { id status graph createdAt } } } } } "
        "pageInfo { hasNextPage endCursor } } }",
        262,
    ),
    (
        "query($t: ID!) { thread(id: $t) { id status values "
        "latestCheckpoint { id step values next pendingWrites { taskId channel } } "
        "checkpoints(first: 20) { edges { node { id step source next metadata } } "
        "pageInfo { hasNextPage endCursor } } "
        "runs(first: 20) { edges { node { id status error createdAt finishedAt } } } } }",
        87,
    ),
    (
        "{ runs(first: 20) { edges { node { id status thread { id status } "
        "events(first: 100) { seq __typename } } } } }",
        2061,
    ),
    (
        "query($r: ID!) { run(id: $r) { id status output "
        "events(first: 1000) { seq at __typename ... on MessageDelta { delta } } } }",
        1001,
    ),
    (  # an overview of everything: the largest page the default lets through
        "{ threads(first: 100) { edges { node { id runs(first: 100) "
        "{ edges { node { id status } } } } } } }",
        20301,
    ),
]

MISSING_RUN = "00000000-0000-4000-8000-000000000000"
MISSING_RUN_EVENTS = f'subscription {{ runEvents(runId: "{MISSING_RUN}") {{ seq }} }}'


def readme_operations() -> list[str]:
    """Every GraphQL document of the README's tour: its blocks, the curl and the JS one.

    A block fenced `graphql session` is a transcript (several operations, each with
    its answer as a comment), not one document: it is left out.
    """
    text = README.read_text()
    found = re.findall(r"```graphql\n(.*?)```", text, re.S)
    found += [json.loads(body)["query"] for body in re.findall(r"-d '(\{.*?\})'", text)]
    found += re.findall(r"query: `(.*?)`", text, re.S)
    return found


def cost(body: dict[str, Any]) -> int:
    value: int = body["extensions"]["cost"]
    return value


async def started(server: Server) -> dict[str, Any]:
    run: dict[str, Any] = data(await gql(server.http, START, {"input": FAST}))["startRun"]
    await until_finished(server.http, run["id"])
    return run


async def test_readme_and_dashboard_pages_pass_the_default(server: Server) -> None:
    run = await started(server)
    ids = {"t": run["threadId"], "r": run["id"], "id": run["id"], "after": None}
    operations = readme_operations()
    assert len(operations) >= 6  # health, startRun, history, deleteThread, two subscriptions
    for query in [q for q, _ in DASHBOARD] + operations:
        if query.lstrip().startswith("subscription"):
            async with TransportWS.connect(server.ws_url) as ws:
                await ws.subscribe("1", query, ids)
                payloads, end = await ws.collect("1")
            assert end is not None and end["type"] == "complete", end
            assert payloads and all("errors" not in p for p in payloads), payloads
            continue
        if query.lstrip().startswith("mutation($t"):  # deleteThread: the tour's last step
            continue
        body = await gql(server.http, query, ids)
        data(body)
        assert 0 < cost(body) <= DEFAULT_MAX_COST, (query, cost(body))
    for query, expected in DASHBOARD:
        assert cost(await gql(server.http, query, ids)) == expected, query
    delete = next(q for q in operations if q.lstrip().startswith("mutation($t"))
    deleted = await gql(server.http, delete, ids)
    assert data(deleted)["deleteThread"]["deleted"] and cost(deleted) == 1


async def test_ten_million_events_are_refused_before_they_run(start: Starter) -> None:
    async with start() as server:
        await started(server)
        body = await gql(server.http, TEN_MILLION)
        assert body["data"] is None and codes(body) == ["QUERY_TOO_COMPLEX"]
        error = body["errors"][0]
        assert error["extensions"]["cost"] == 10_020_301
        assert error["extensions"]["maxCost"] == DEFAULT_MAX_COST == 25_000
        assert "10020301" in error["message"] and "path" not in error
        assert cost(body) == 10_020_301
        # One level less is within the depth limit too, and within the cost limit.
        small = TEN_MILLION.replace("first: 1000", "first: 1").replace("first: 100", "first: 10")
        assert cost(await gql(server.http, small)) == 1 + 10 + 10 + 10 + 100 + 100 + 100
    async with start(Limits(max_cost=0)) as server:  # 0: no maximum, still priced
        body = await gql(server.http, "{ threads(first: 1) { edges { node { id } } } }")
        assert data(body) and cost(body) == 3


async def test_variables_fragments_aliases_and_introspection(start: Starter) -> None:
    paged = "query($n: Int) { threads(first: $n) { edges { node { id } } } }"
    defaulted = "query($n: Int = 40) { threads(first: $n) { edges { node { id } } } }"
    by_default = "{ threads { edges { node { id runs { edges { node { id } } } } } } }"
    fragments = """
        query { ...Page }
        fragment Page on Query { threads(first: 40) { ...Edges } }
        fragment Edges on ThreadConnection { edges { node { ... on Thread { id } } } }
    """
    aliases = (
        "{ a: threads(first: 20) { edges { node { id } } } "
        "b: threads(first: 20) { edges { node { id } } } }"
    )
    async with start(Limits(max_cost=60)) as server:
        assert cost(await gql(server.http, paged, {"n": 5})) == 11
        assert codes(await gql(server.http, paged, {"n": 40})) == ["QUERY_TOO_COMPLEX"]
        assert cost(await gql(server.http, paged, {"n": None})) == 41  # the schema's 20
        # Execution takes 40.0 as 40 (graphql-core's Int): priced so, not as the default.
        assert codes(await gql(server.http, paged, {"n": 40.0})) == ["QUERY_TOO_COMPLEX"]
        assert cost(await gql(server.http, paged, {"n": 5.0})) == 11
        assert codes(await gql(server.http, defaulted)) == ["QUERY_TOO_COMPLEX"]
        assert cost(await gql(server.http, defaulted, {"n": 2})) == 5
        refused = await gql(server.http, by_default)  # 20 threads with 20 runs each
        assert codes(refused) == ["QUERY_TOO_COMPLEX"]
        assert refused["errors"][0]["extensions"] == {
            "cost": 1 + 20 + 20 + 20 + 400 + 400,
            "maxCost": 60,
            "code": "QUERY_TOO_COMPLEX",
        }
        assert codes(await gql(server.http, fragments)) == ["QUERY_TOO_COMPLEX"]
        assert cost(await gql(server.http, fragments.replace("40", "4"))) == 9
        assert cost(await gql(server.http, aliases.replace("20", "9"))) == 2 * 19
        assert codes(await gql(server.http, aliases)) == ["QUERY_TOO_COMPLEX"]
        introspection = await gql(server.http, get_introspection_query())  # GraphiQL's
        assert data(introspection)["__schema"] and cost(introspection) == 1
        assert cost(await gql(server.http, "{ __typename }")) == 0


async def test_a_subscription_is_checked_before_it_starts(start: Starter) -> None:
    follow = "subscription($r: ID!) { runEvents(runId: $r) { seq } }"
    async with start(Limits(max_cost=99)) as server:
        run = await started(server)
        async with TransportWS.connect(server.ws_url) as ws:
            await ws.subscribe("1", follow, {"r": run["id"]})
            payloads, end = await ws.collect("1")
        assert end is not None, payloads
        errors = end["payload"] if end["type"] == "error" else payloads[0]["errors"]
        assert [e["extensions"]["code"] for e in errors] == ["QUERY_TOO_COMPLEX"]
        assert errors[0]["extensions"]["cost"] == 100  # a page of events
        assert all("data" not in p or p["data"] is None for p in payloads)
    async with start(Limits(max_cost=100)) as server:
        run = await started(server)
        async with TransportWS.connect(server.ws_url) as ws:
            await ws.subscribe("1", follow, {"r": run["id"]})
            payloads, end = await ws.collect("1")
        assert end is not None and end["type"] == "complete", end
        assert [p["data"]["runEvents"]["seq"] for p in payloads][:2] == [1, 2]


KEYS = "alice-0123456789abcdef=alice,bob-0123456789abcdef=bob"


def client(server: Server, key: str) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {key}"}
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=20)


async def test_reads_spend_their_cost_from_a_bucket_of_their_own(tmp_path: Path) -> None:
    settings = settings_from_env(
        {"CODE_HERO_API_KEYS": KEYS}, sqlite_path=str(tmp_path / "app.sqlite")
    )
    access = AccessSettings(
        rate_limit=RateLimit(2, 3600.0), read_rate_limit=RateLimit(1000, 3600.0)
    )
    gateway = replace(settings.gateway, access=access)
    page = "{ threads(first: 100) { edges { node { id } } } }"  # 201
    async with (
        running(create_app(settings.with_options(gateway=gateway))) as server,
        client(server, "alice-0123456789abcdef") as alice,
        client(server, "bob-0123456789abcdef") as bob,
    ):
        for _ in range(4):
            assert cost(await gql(alice, page)) == 201
        limited = await gql(alice, page)  # 196 points left: 5 short, 18 s at 1000/h
        assert limited["data"] is None and codes(limited) == ["RATE_LIMITED"]
        assert 1 <= limited["errors"][0]["extensions"]["retryAfter"] <= 19
        assert cost(limited) == 201
        assert cost(await gql(alice, "{ graphs { name } }")) == 1  # what is left still serves
        refused = await gql(alice, TEN_MILLION.replace("first: 1000", "first: 10"))
        assert codes(refused) == ["QUERY_TOO_COMPLEX"]  # refused before it spends
        assert cost(await gql(alice, "{ health { status } }")) == 1
        # Mutations have their own bucket: reads used up, startRun still counts as before.
        delete = f'mutation {{ deleteRun(id: "{MISSING_RUN}") {{ deleted }} }}'
        for _ in range(2):
            assert data(await gql(alice, delete))["deleteRun"]["deleted"] is False
        assert codes(await gql(alice, delete)) == ["RATE_LIMITED"]
        assert cost(await gql(bob, page)) == 201  # every user has buckets of its own
        async with TransportWS.connect(
            server.ws_url, payload={"authorization": "alice-0123456789abcdef"}
        ) as ws:
            # A subscription spends a page of events (100) when it starts: 194 points
            # left are enough for one.
            for op_id, code in (("1", "NOT_FOUND"), ("2", "RATE_LIMITED")):
                await ws.subscribe(op_id, MISSING_RUN_EVENTS)
                payloads, end = await ws.collect(op_id)
                assert end is not None
                errors = end["payload"] if end["type"] == "error" else payloads[0]["errors"]
                assert [e["extensions"]["code"] for e in errors] == [code]


async def test_a_dashboard_is_not_throttled_by_the_defaults(tmp_path: Path) -> None:
    """A minute of a dashboard refreshing three pages every two seconds, sent at once."""
    settings = settings_from_env(
        {"CODE_HERO_API_KEYS": KEYS}, sqlite_path=str(tmp_path / "app.sqlite")
    )
    read_limit = settings.gateway.access.read_rate_limit
    assert read_limit == RateLimit(300_000, 60.0)
    pages = [q for q, _ in DASHBOARD[:3]]
    async with (
        running(create_app(settings)) as server,
        client(server, "alice-0123456789abcdef") as alice,
    ):
        ids = {"t": "none"}
        spent = 0
        for _ in range(30):
            for query in pages:
                spent += cost(data_and(await gql(alice, query, ids)))
        assert spent == 30 * (262 + 87 + 2061)
        # A client pulling the largest pages the cost limit allows is held back.
        heavy = DASHBOARD[4][0]
        answers = [await gql(alice, heavy) for _ in range(40)]
        assert "RATE_LIMITED" in {c for body in answers for c in codes(body)}


def data_and(body: dict[str, Any]) -> dict[str, Any]:
    """The body, after checking it has no errors."""
    data(body)
    return body


@pytest.mark.parametrize("value", ["0", "off"])
def test_settings(value: str) -> None:
    env = {"CODE_HERO_MAX_COST": "1234", "CODE_HERO_READ_RATE_LIMIT": value}
    settings = settings_from_env({**env, "CODE_HERO_API_KEYS": KEYS})
    assert settings.limits.max_cost == 1234
    assert settings.gateway.access.read_rate_limit is None
    assert settings_from_env({"CODE_HERO_MAX_COST": "0"}).limits.max_cost == 0
    assert settings_from_env({}).gateway.access.read_rate_limit is None  # open mode: none


async def test_a_cached_document_is_priced_per_operation_and_page_size(
    start: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request is priced with its own operation and `first` (the limit still refuses
    the big page of a document it admitted a small page of), each distinct one once."""
    priced: list[tuple[str | None, Any]] = []
    operation_cost = pricing.operation_cost

    def counting(schema: Any, document: Any, name: Any = None, variables: Any = None) -> int:
        priced.append((name, dict(variables or {}).get("n", "absent")))
        return operation_cost(schema, document, name, variables)

    monkeypatch.setattr(pricing, "operation_cost", counting)
    monkeypatch.setattr(extensions, "operation_cost", counting)
    paged = "query($n: Int = 3) { threads(first: $n) { edges { node { id } } } }"
    named = (
        "query Small { threads(first: 2) { edges { node { id } } } } "
        "query Big { threads(first: 50) { edges { node { id } } } }"
    )

    async def named_cost(server: Server, name: str) -> dict[str, Any]:
        response = await server.http.post("/graphql", json={"query": named, "operationName": name})
        body: dict[str, Any] = response.json()
        return body

    async with start(Limits(max_cost=60)) as server:
        for _ in range(2):
            assert cost(await gql(server.http, paged, {"n": 5})) == 11
            assert codes(await gql(server.http, paged, {"n": 40})) == ["QUERY_TOO_COMPLEX"]
            assert cost(await gql(server.http, paged)) == 7  # the variable's default: 3
            assert cost(await gql(server.http, paged, {"n": None})) == 41  # the schema's 20
            assert cost(await gql(server.http, paged, {"n": 1})) == 3
            refused = await gql(server.http, paged, {"n": True})  # not 1: execution refuses it
            assert cost(refused) == 41 and codes(refused) == ["BAD_USER_INPUT"]
            assert cost(await named_cost(server, "Small")) == 5
            assert codes(await named_cost(server, "Big")) == ["QUERY_TOO_COMPLEX"]
    assert priced == [
        (None, 5),
        (None, 40),
        (None, "absent"),
        (None, None),
        (None, 1),  # True prices as null does: the schema's default
        ("Small", "absent"),
        ("Big", "absent"),
    ]
