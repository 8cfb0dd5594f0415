"""Filters of threads and runs: every field, AND, `anyOf`, `not`, owner isolation, bad input.

Threads and runs are stored as given through the gateway's registry, then
listed over GraphQL on SQLite and PostgreSQL; each listing's `totalCount`
must agree with its pages.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from code_hero.persistence.records import Registry, RunRecord, RunStatus, ThreadStatus
from code_hero.settings import Limits
from tests.auth.issuer import Issuer
from tests.faults import BlackHoleProxy
from tests.graphql import test_dashboards
from tests.graphql.clients import codes, data, gql
from tests.graphql.conftest import Server, Starter, checkpointer_for
from tests.graphql.test_auth import ALICE_KEY, BOB_KEY, FAST, ROOT_KEY, START, client, secured
from tests.graphql.test_dashboards import RUNS, THREADS, at, put_thread, walk
from tests.graphql.test_outage import wait_for_status

MISSING_THREAD = "no-such-thread"
outage_server = test_dashboards.outage_server  # the fixture: a server behind a fault proxy


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


async def put_run(
    registry: Registry,
    thread_id: str,
    created: int,
    *,
    status: RunStatus = RunStatus.SUCCESS,
    user: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    run_id = str(uuid.uuid4())
    await registry.put_run(
        RunRecord(
            run_id=run_id,
            thread_id=thread_id,
            graph="g",
            status=status,
            user_id=user,
            metadata=metadata or {},
            created_at=at(created),
        )
    )
    return run_id


async def matching(http: httpx.AsyncClient, query: str, field: str, flt: Any) -> list[str]:
    """The ids of one full page (in the listing's order), checked against its totalCount."""
    body = data(await gql(http, query % "totalCount", {"first": 100, "filter": flt}))
    ids = [e["node"]["id"] for e in body[field]["edges"]]
    assert body[field]["totalCount"] == len(ids), flt
    return ids


async def error(http: httpx.AsyncClient, query: str, flt: Any) -> tuple[list[str], str]:
    """The codes and messages of a listing with this filter (sent as ASCII JSON: a lone
    surrogate travels as its escape)."""
    text = flt if isinstance(flt, str) else json.dumps(flt)
    payload = json.dumps({"query": query % "totalCount", "variables": {}})
    payload = payload.replace('"variables": {}', f'"variables": {{"filter": {text}}}')
    response = await http.post(
        "/graphql", content=payload, headers={"content-type": "application/json"}
    )
    # JSON nested past the parser's recursion limit is refused whole (HTTP 400).
    assert response.status_code in (200, 400), response.text
    body = response.json()
    return codes(body), " ".join(e["message"] for e in body.get("errors", []))


class Threads:
    """Eight threads, newest updated last in this list; their ids by name."""

    def __init__(self, ids: dict[str, str]) -> None:
        self.ids = ids

    def __call__(self, *names: str) -> list[str]:
        """The ids of these threads in the default order (newest updated first)."""
        order = list(self.ids)
        return [self.ids[n] for n in sorted(names, key=order.index, reverse=True)]


async def some_threads(registry: Registry) -> Threads:
    specs: list[tuple[str, ThreadStatus, dict[str, Any], str | None]] = [
        ("a", ThreadStatus.IDLE, {"team": "red", "env": "prod"}, "alice"),
        ("b", ThreadStatus.BUSY, {"team": "red"}, "alice"),
        ("c", ThreadStatus.ERROR, {"team": "blue", "env": "dev"}, "bob"),
        ("d", ThreadStatus.INTERRUPTED, {"env": "prod", 'odd"key': 1}, "bob"),
        ("e", ThreadStatus.IDLE, {}, None),
        ("f", ThreadStatus.BUSY, {"team": "blue", "nested": {"env": 1}}, "bob"),
    ]
    ids: dict[str, str] = {}
    for i, (name, status, metadata, user) in enumerate(specs):
        # created 0, 10, 20, ...; updated in the same order, 100 later
        ids[name] = await put_thread(
            registry, 10 * i, 100 + 10 * i, user=user, status=status, metadata=metadata
        )
    return Threads(ids)


# ------------------------------------------------------------------ each field


async def test_each_new_thread_field_matches_and_counts(server: Server) -> None:
    t = await some_threads(server.gateway.manager.registry)
    http = server.http

    async def threads(flt: Any) -> list[str]:
        return await matching(http, THREADS, "threads", flt)

    assert await threads({"ids": [t.ids["a"], t.ids["c"], MISSING_THREAD]}) == t("a", "c")
    assert await threads({"ids": [t.ids["a"], t.ids["a"]]}) == t("a")
    assert await threads({"ids": []}) == []
    assert await threads({"statuses": ["BUSY", "ERROR"]}) == t("b", "c", "f")
    assert await threads({"statuses": []}) == []
    # Both bounds are strict, as updatedAfter/updatedBefore are.
    assert await threads({"createdAfter": at(10).isoformat()}) == t("c", "d", "e", "f")
    assert await threads({"createdBefore": at(20).isoformat()}) == t("a", "b")
    window = {"createdAfter": at(0).isoformat(), "createdBefore": at(40).isoformat()}
    assert await threads(window) == t("b", "c", "d")
    # Top-level keys only; any key works, quotes included; none asked: every thread.
    assert await threads({"metadataHasKeys": ["team", "env"]}) == t("a", "c")
    assert await threads({"metadataHasKeys": ["env"]}) == t("a", "c", "d")
    assert await threads({"metadataHasKeys": ['odd"key']}) == t("d")
    assert await threads({"metadataHasKeys": []}) == t("a", "b", "c", "d", "e", "f")
    # Every given field must match (AND), the v1 fields among them.
    assert await threads({"statuses": ["IDLE", "BUSY"], "metadata": {"team": "red"}}) == t("a", "b")
    both = {"metadataHasKeys": ["team"], "createdAfter": at(0).isoformat(), "userId": "bob"}
    assert await threads(both) == t("c", "f")
    assert await threads({"ids": [t.ids["a"], t.ids["b"]], "status": "BUSY"}) == t("b")


async def test_any_of_is_or_and_not_is_negation_at_any_depth(server: Server) -> None:
    t = await some_threads(server.gateway.manager.registry)
    http = server.http

    async def threads(flt: Any) -> list[str]:
        return await matching(http, THREADS, "threads", flt)

    every = t("a", "b", "c", "d", "e", "f")
    red_or_error = {"anyOf": [{"metadata": {"team": "red"}}, {"status": "ERROR"}]}
    assert await threads(red_or_error) == t("a", "b", "c")
    # anyOf is AND-ed with the fields beside it.
    assert await threads({**red_or_error, "statuses": ["IDLE", "ERROR"]}) == t("a", "c")
    assert await threads({"not": {"statuses": ["IDLE"]}}) == t("b", "c", "d", "f")
    # A key the metadata lacks, or a user id that is null, still makes a "not" true:
    # SQL's NULL is no match, so its negation is a match.
    assert await threads({"not": {"metadata": {"team": "red"}}}) == t("c", "d", "e", "f")
    assert await threads({"not": {"userId": "alice"}}) == t("c", "d", "e", "f")
    assert await threads({"not": {"metadataHasKeys": ["env"]}}) == t("b", "e", "f")
    # Nested: not (red or ERROR), and anyOf inside not inside anyOf.
    assert await threads({"not": red_or_error}) == t("d", "e", "f")
    deep = {"anyOf": [{"ids": [t.ids["e"]]}, {"not": {"anyOf": [red_or_error, {"userId": "bob"}]}}]}
    assert await threads(deep) == t("e")
    assert await threads({"not": {"not": {"status": "BUSY"}}}) == t("b", "f")
    # The empty cases: an empty OR matches nothing, an empty filter everything.
    assert await threads({"anyOf": []}) == []
    assert await threads({"anyOf": [{}]}) == every
    assert await threads({"not": {}}) == []
    assert await threads({"not": {"anyOf": []}}) == every
    # Ten levels of not (the default depth limit) are allowed.
    flt: dict[str, Any] = {"status": "BUSY"}
    for _ in range(10):
        flt = {"not": flt}
    assert await threads(flt) == t("b", "f")
    # An input object holds no answer: a filter, however nested, costs nothing.
    costs = [
        (await gql(http, THREADS % "totalCount", {"filter": f}))["extensions"]["cost"]
        for f in (None, flt, deep)
    ]
    assert costs[0] == costs[1] == costs[2]


async def test_run_filter_fields(server: Server) -> None:
    registry = server.gateway.manager.registry
    one = await put_thread(registry, 0, 0)
    two = await put_thread(registry, 1, 1)
    specs: list[tuple[str, RunStatus, str | None, dict[str, Any]]] = [
        (one, RunStatus.SUCCESS, "alice", {"source": "cron", "tier": 1}),
        (one, RunStatus.ERROR, "alice", {"source": "api"}),
        (two, RunStatus.PENDING, "bob", {"source": "cron"}),
        (two, RunStatus.CANCELLED, None, {}),
    ]
    runs = [
        await put_run(registry, tid, i, status=s, user=u, metadata=m)
        for i, (tid, s, u, m) in enumerate(specs)
    ]
    http = server.http

    async def listed(flt: Any) -> list[str]:
        return await matching(http, RUNS, "runs", flt)

    def newest_first(*indexes: int) -> list[str]:
        return [runs[i] for i in sorted(indexes, reverse=True)]

    assert await listed({"statuses": ["SUCCESS", "PENDING"]}) == newest_first(0, 2)
    assert await listed({"statuses": []}) == []
    assert await listed({"metadata": {"source": "cron"}}) == newest_first(0, 2)
    assert await listed({"metadata": {"source": "cron", "tier": 1}}) == newest_first(0)
    assert await listed({"metadata": {}}) == newest_first(0, 1, 2, 3)
    assert await listed({"userId": "alice"}) == newest_first(0, 1)
    combined = {"userId": "alice", "statuses": ["ERROR", "PENDING"], "threadId": one}
    assert await listed(combined) == newest_first(1)
    assert await listed({"status": "SUCCESS", "statuses": ["ERROR"]}) == []
    assert await listed({"graph": "g", "metadata": {"source": "api"}}) == newest_first(1)


async def test_cursor_paging_honours_the_filter(server: Server) -> None:
    registry = server.gateway.manager.registry
    wanted = []
    for i in range(9):
        status = ThreadStatus.BUSY if i % 3 else ThreadStatus.IDLE
        # creation order is the reverse of update order
        thread_id = await put_thread(registry, 100 - i, i, status=status, metadata={"n": i % 2})
        if status is ThreadStatus.BUSY and i % 2 == 0:
            wanted.append(thread_id)
    flt = {"anyOf": [{"statuses": ["BUSY"]}], "not": {"metadata": {"n": 1}}}
    http = server.http
    assert await walk(http, THREADS, "threads", filter=flt) == wanted[::-1]
    by_creation = {"field": "CREATED_AT", "direction": "ASC"}
    assert await walk(http, THREADS, "threads", filter=flt, order=by_creation) == wanted[::-1]
    oldest_first = {"field": "UPDATED_AT", "direction": "ASC"}
    assert await walk(http, THREADS, "threads", filter=flt, order=oldest_first) == wanted
    ok, failed = RunStatus.SUCCESS, RunStatus.ERROR
    made = [await put_run(registry, wanted[0], i, status=failed if i % 2 else ok) for i in range(7)]
    errors = [r for i, r in enumerate(made) if i % 2]
    assert await walk(http, RUNS, "runs", filter={"statuses": ["ERROR"]}) == errors[::-1]


# ------------------------------------------------------------------ owners


async def test_not_and_any_of_never_widen_what_a_user_sees(
    backend: str, idp: Issuer, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with secured(checkpointer_for(backend, request, tmp_path), idp) as server:
        registry = server.gateway.manager.registry
        t = await some_threads(registry)
        alices, bobs = t("a", "b"), t("c", "d", "f")
        for name, thread_id in t.ids.items():
            await put_run(registry, thread_id, 1, status=RunStatus.ERROR)
            await put_run(registry, thread_id, 2, metadata={"of": name})
        widening = [
            {"not": {"userId": "alice"}},
            {"anyOf": [{"userId": "alice"}, {}]},
            {"anyOf": [{"ids": alices}, {"not": {}}]},
            {"not": {"not": {}}},
        ]
        async with client(server, BOB_KEY) as http:
            for flt in widening:
                listed = await matching(http, THREADS, "threads", flt)
                assert set(listed) <= set(bobs), flt
            assert await matching(http, THREADS, "threads", {"ids": alices}) == []
            assert await matching(http, THREADS, "threads", {"not": {"userId": "alice"}}) == bobs
            runs = await matching(http, RUNS, "runs", {"statuses": ["ERROR", "SUCCESS"]})
            assert len(runs) == 2 * len(bobs)
            assert await matching(http, RUNS, "runs", {"metadata": {"of": "a"}}) == []
            assert len(await matching(http, RUNS, "runs", {"metadata": {"of": "c"}})) == 1
            # A run filter naming another user is refused, as before.
            body = await gql(http, RUNS % "totalCount", {"filter": {"userId": "alice"}})
            assert codes(body) == ["FORBIDDEN"]
        async with client(server, ALICE_KEY) as http:
            assert await matching(http, THREADS, "threads", {"not": {"userId": "alice"}}) == []
        async with client(server, ROOT_KEY) as http:
            everyone_else = t("c", "d", "e", "f")
            assert await matching(http, THREADS, "threads", {"not": {"userId": "alice"}}) == (
                everyone_else
            )
            assert len(await matching(http, RUNS, "runs", {"statuses": ["ERROR"]})) == 6


# ------------------------------------------------------------------ bad input


def nest(value: Any, levels: int, key: str = 'q"') -> Any:
    """`value` under `levels` objects of one key each."""
    for _ in range(levels):
        value = {key: value}
    return value


async def test_bad_filters_are_bad_user_input_naming_the_argument(server: Server) -> None:
    http = server.http
    nested = {"status": "BUSY"}
    for _ in range(11):
        nested = {"not": nested}
    wide = {"anyOf": [{"anyOf": [{} for _ in range(60)]} for _ in range(2)]}
    cases: list[tuple[str, Any, str]] = [
        (THREADS, {"metadata": [1]}, "filter.metadata"),
        (THREADS, {"anyOf": [{}, {"metadata": "x"}]}, "filter.anyOf[1].metadata"),
        (THREADS, {"not": {"metadata": 3}}, "filter.not.metadata"),
        (THREADS, {"ids": ["has space"]}, "filter.ids"),
        (THREADS, {"not": {"ids": ["x" * 129]}}, "filter.not.ids"),
        (THREADS, {"ids": [f"t{i}" for i in range(1001)]}, "filter.ids"),
        (THREADS, {"metadataHasKeys": ["a\x00b"]}, "filter.metadataHasKeys"),
        (THREADS, {"anyOf": [{"userId": "a\ud800"}]}, "filter.anyOf[0].userId"),
        (THREADS, nested, "depth limit"),
        (THREADS, wide, "sub-filters"),
        (RUNS, {"metadata": ["x"]}, "filter.metadata"),
        (RUNS, {"metadata": {"k": "\x00"}}, "filter.metadata"),
        # SQLite refuses an expression more than 1,000 deep (a condition a value) and a
        # statement nesting subqueries past its parser's stack (one an array level, or a
        # key a JSON path cannot quote): both answered INTERNAL.
        (THREADS, {"metadata": {f"k{i}": i for i in range(1000)}}, "filter.metadata"),
        (RUNS, {"metadata": {"tags": list(range(101))}}, "filter.metadata"),
        (THREADS, {"anyOf": [{"metadata": {"a": [[[[[[1]]]]]]}}]}, "filter.anyOf[0].metadata"),
        (THREADS, {"metadata": nest({'q"': 1}, 8)}, "filter.metadata"),
        # 100 values in all the metadata of a filter: each array item was a scan of its
        # own on SQLite, and an anyOf of 100 metadata of 100 items took seconds a row.
        (
            THREADS,
            {"anyOf": [{"metadata": {"tags": list(range(40))}} for _ in range(3)]},
            "filter.anyOf[2].metadata",
        ),
    ]
    for query, flt, named in cases:
        found, message = await error(http, query, flt)
        assert found == ["BAD_USER_INPUT"], (flt, found, message)
        assert named in message, (named, message)
    # A filter nested far past any limit is refused cleanly, never an internal error.
    for depth in (200, 900, 2000):
        deep = '{"not": ' * depth + "{}" + "}" * depth
        found, message = await error(http, THREADS, deep)
        assert found == ["BAD_USER_INPUT"], (depth, found, message)
    literal = "{not: " * 300 + "{}" + "}" * 300
    body = await gql(http, f"{{ threads(filter: {literal}) {{ totalCount }} }}")
    assert codes(body) == ["BAD_USER_INPUT"]
    # Within the bounds, at the deepest nesting of filters: an answer.
    deepest = {"metadata": {f"k{i}": [i] for i in range(47)} | {"a": [[[[[1]]]]]}}
    for inner in (deepest, {"metadata": nest({'q"': 1}, 4)}):
        assert await matching(http, THREADS, "threads", nest(inner, 10, "not")) == []
    # 1,000 ids are within the bound (and the same id twice counts once).
    many = {"ids": [f"t{i}" for i in range(1000)] + ["t0"]}
    assert await matching(http, THREADS, "threads", many) == []


# ------------------------------------------------------------------ during an outage


@pytest.mark.postgres
async def test_filters_during_an_outage_list_the_fallbacks_threads(
    outage_server: tuple[Server, BlackHoleProxy],
) -> None:
    server, proxy = outage_server
    http = server.http
    old = data(await gql(http, START, {"input": FAST}))["startRun"]["threadId"]
    proxy.refuse()
    await wait_for_status(server, "DEGRADED")
    new = data(await gql(http, START, {"input": FAST}))["startRun"]["threadId"]

    # The fallback's SQLite answers the new fields, nested ones too.
    nested = {"statuses": ["IDLE"], "anyOf": [{"ids": [old]}, {"ids": [new]}]}
    assert await matching(http, THREADS, "threads", nested) == [new]
    assert await matching(http, THREADS, "threads", {"not": {"ids": [new]}}) == []
    assert await matching(http, THREADS, "threads", {"ids": [new]}) == [new]
    assert len(await matching(http, RUNS, "runs", {"statuses": ["SUCCESS"]})) == 1
    # Naming a thread the fallback does not hold needs the primary, as a run filter does.
    for flt in ({"ids": [old]}, {"ids": [new, old]}):
        assert (await error(http, THREADS, flt))[0] == ["UNAVAILABLE"]

    proxy.forward()
    await wait_for_status(server, "HEALTHY")
    assert await matching(http, THREADS, "threads", {"ids": [new, old]}) == [new, old]


async def test_filters_nest_boundedly_with_the_depth_limit_off(start: Starter) -> None:
    # With the query depth limit off, 100 levels of not (within the sub-filter budget)
    # reached SQLite as a statement past its parser's stack: INTERNAL.
    async with start(Limits(max_depth=0)) as server:
        found, message = await error(server.http, THREADS, nest({}, 100, "not"))
        assert found == ["BAD_USER_INPUT"], message
        assert "10 levels" in message
        # The deepest allowed, around the largest metadata filter allowed: an answer.
        deepest = {"metadata": {f"k{i}": [i] for i in range(47)} | {"a": [[[[[1]]]]]}}
        assert await matching(server.http, THREADS, "threads", nest(deepest, 10, "not")) == []
