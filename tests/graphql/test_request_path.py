"""The request path's shortcuts answer exactly what the long way did.

Parsed documents are reused per text (never a failed one) and validated until found
valid, an exact `application/json` Content-Type is taken without parsing it,
`thread { checkpoints }` reads the thread once and at the same time as the
page, responses are encoded with orjson
(falling back to json for what it refuses), and so are DateTime values, and a
checkpoint's values are rendered only when selected.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from graphql import DocumentNode, parse
from hypothesis import given, settings
from hypothesis import strategies as st
from strawberry.http import async_base_view

from code_hero.app import GraphQLView
from code_hero.limits import MAX_CACHED_TEXT
from code_hero.schema.extensions import Documents
from code_hero.schema.scalars import serialize_datetime
from code_hero.settings import Limits
from tests.graphql.clients import codes, data, gql
from tests.graphql.conftest import Server, Starter
from tests.graphql.test_queries import start_run

CREATE = """mutation($input: CreateThreadInput!) {
  createThread(input: $input) { id metadata } }"""
THREAD = "query($id: ID!) { thread(id: $id) { id metadata } }"
PAGE = """query($id: ID!) { thread(id: $id) { checkpoints(first: 5) { edges { node {
  id parentId step source next %s } } } } }"""


async def test_one_document_many_variables(server: Server) -> None:
    """A cached document serves each request its own variables (and nothing else)."""
    ids = []
    for i in range(3):
        body = await gql(server.http, CREATE, {"input": {"metadata": {"n": i}}})
        ids.append(data(body)["createThread"]["id"])
    for i, thread_id in enumerate(ids * 2):
        got = data(await gql(server.http, THREAD, {"id": thread_id}))["thread"]
        assert got == {"id": thread_id, "metadata": {"n": i % 3}}


async def test_a_failed_document_fails_every_time(start: Starter) -> None:
    """Texts that did not parse are not cached: each request gets the same error."""
    long_query = "{ " + " ".join(f"f{i}: graphs {{ name }}" for i in range(10)) + " }"
    async with start(Limits(max_tokens=30, max_aliases=0)) as server:
        for _ in range(3):
            body = await gql(server.http, "{ graphs { name ")
            assert codes(body) == ["BAD_USER_INPUT"]
            assert "Syntax Error" in body["errors"][0]["message"]
            body = await gql(server.http, long_query)
            assert codes(body) == ["BAD_USER_INPUT"] and "tokens" in body["errors"][0]["message"]
            assert data(await gql(server.http, "{ graphs { name } }"))


def test_parsed_documents_are_bounded() -> None:
    """The LRU keeps at most `maxsize` texts, the most recently used ones."""
    documents = Documents(maxsize=2)
    cache = documents.cache

    def request(text: str) -> DocumentNode:
        ctx = SimpleNamespace(query=text, graphql_document=None)
        hook = documents.parse(ctx)  # type: ignore[arg-type]
        next(hook)
        if ctx.graphql_document is None:  # what Strawberry does when no one set it
            ctx.graphql_document = parse(text)
        for _ in hook:
            pass
        document: DocumentNode = ctx.graphql_document
        return document

    first = request("{ a }")
    assert request("{ a }") is first  # reused, not parsed again
    request("{ b }")
    request("{ a }")  # a is now the most recent
    request("{ c }")  # evicts b
    assert list(cache) == ["{ a }", "{ c }"]
    assert request("{ a }") is first
    huge = '{ thread(id: "' + "x" * MAX_CACHED_TEXT + '") { id } }'
    request(huge)  # parsed, used, not kept: 512 such texts would be a memory sink
    assert huge not in cache and list(cache) == ["{ c }", "{ a }"]


def test_documents_are_validated_until_found_valid() -> None:
    """A cached text found valid skips validation from then on; one found invalid
    is validated (and refused) every time."""
    documents = Documents()
    cache = documents.cache
    validations: list[str] = []

    def request(text: str, errors: list[str]) -> list[str] | None:
        ctx = SimpleNamespace(
            query=text,
            graphql_document=None,
            pre_execution_errors=None,
            _provided_operation_name=None,  # as Strawberry's ExecutionContext keeps it
        )
        for _ in documents.parse(ctx):  # type: ignore[arg-type]
            if ctx.graphql_document is None:
                ctx.graphql_document = parse(text)
        for _ in documents.validate(ctx, cache[text]):  # type: ignore[arg-type]
            if ctx.pre_execution_errors is None:  # what Strawberry's validation does
                validations.append(text)
                ctx.pre_execution_errors = errors
        result: list[str] | None = ctx.pre_execution_errors
        return result

    assert request("{ a }", []) == [] and validations == ["{ a }"]
    assert request("{ a }", ["never asked"]) == [] and validations == ["{ a }"]
    assert request("{ b }", ["too deep"]) == ["too deep"]
    assert request("{ b }", ["too deep"]) == ["too deep"]
    assert validations == ["{ a }", "{ b }", "{ b }"]
    assert cache["{ a }"].valid and not cache["{ b }"].valid


async def test_a_datetime_out_of_range_is_bad_input(server: Server) -> None:
    for at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-10:00"):
        query = "query($at: DateTime) { threads(filter: {createdAfter: $at}) { totalCount } }"
        body = await gql(server.http, query, {"at": at})
        assert codes(body) == ["BAD_USER_INPUT"], body


async def test_text_the_encoders_differ_on(server: Server) -> None:
    """Non-ASCII text and integers past 64 bits come back as they went in."""
    metadata: dict[str, Any] = {"text": "héllo ✓ \u2028 😀", "big": 2**70, "neg": -(2**65)}
    body = await gql(server.http, CREATE, {"input": {"metadata": metadata}})
    assert data(body)["createThread"]["metadata"] == metadata
    thread_id = data(body)["createThread"]["id"]
    assert data(await gql(server.http, THREAD, {"id": thread_id}))["thread"]["metadata"] == (
        metadata
    )


async def test_bodies_orjson_reads_otherwise_are_read_as_json_loads_reads_them(
    server: Server,
) -> None:
    """A request body is read with orjson where it reads JSON as json.loads does; where
    it would not (integers past 64 bits: floats to orjson; a UTF-8 byte order mark,
    NaN: refused by orjson), the answer is json.loads's, as before."""

    async def post(body: bytes) -> Any:
        headers = {"content-type": "application/json"}
        return (await server.http.post("/graphql", content=body, headers=headers)).json()

    query = "query($n: Int) { threads(first: $n) { totalCount } }"
    for n in (2**64, -(2**63) - 1):  # past 64 bits: the exact integer in the message
        body = await post(json.dumps({"query": query, "variables": {"n": n}}).encode())
        assert codes(body) == ["BAD_USER_INPUT"] and str(n) in body["errors"][0]["message"]
    typename = json.dumps({"query": "{ __typename }"}).encode()
    assert data(await post(b"\xef\xbb\xbf" + typename)) == {"__typename": "Query"}
    big = {"query": CREATE, "variables": {"input": {"metadata": {"n": 2**70, "f": 1.5}}}}
    body = await post(json.dumps(big).encode())
    assert data(body)["createThread"]["metadata"] == {"n": 2**70, "f": 1.5}
    body = await post(json.dumps({"query": query, "variables": {"n": float("nan")}}).encode())
    assert codes(body) == ["BAD_USER_INPUT"] and "nan" in body["errors"][0]["message"]


async def test_a_page_without_values(server: Server) -> None:
    """Leaving values out changes nothing else on the page; selecting them renders them."""
    run = await start_run(server)
    plain = data(await gql(server.http, PAGE % "", {"id": run["threadId"]}))
    full = data(await gql(server.http, PAGE % "values", {"id": run["threadId"]}))
    plain_nodes = [e["node"] for e in plain["thread"]["checkpoints"]["edges"]]
    full_nodes = [e["node"] for e in full["thread"]["checkpoints"]["edges"]]
    assert len(plain_nodes) >= 3
    assert [{k: v for k, v in n.items() if k != "values"} for n in full_nodes] == plain_nodes
    assert any(n["next"] for n in plain_nodes)
    assert any(n["values"] for n in full_nodes)
    assert all(not k.startswith("__") for n in full_nodes for k in n["values"])


async def test_a_page_under_its_thread_reads_the_thread_once(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`thread { checkpoints }` checks ownership with the record `thread` just read:
    the registry is asked once (not again for the page), and the page is the gateway's."""
    run = await start_run(server)
    registry = server.gateway.manager.registry
    asked: list[str] = []
    for name in ("get_threads", "expired_thread_ids"):
        real = getattr(registry, name)

        async def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            asked.append(_name)
            return await _real(*args, **kw)

        monkeypatch.setattr(registry, name, counted)
    body = data(await gql(server.http, PAGE % "values", {"id": run["threadId"]}))
    assert asked == ["get_threads"]
    direct = await server.gateway.list_checkpoints(run["threadId"], first=5)
    nodes = [e["node"] for e in body["thread"]["checkpoints"]["edges"]]
    assert [n["id"] for n in nodes] == [v.checkpoint_id for v in direct.items]
    assert [n["values"] for n in nodes] == [v.values for v in direct.items]


async def test_a_page_under_its_thread_is_read_with_the_thread(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`thread(id:) { checkpoints }` reads the thread's record and its page at once: the
    registry's answer waits here until the page's read has begun, which never happens
    when the page is read only after the thread (the wait then times out)."""
    run = await start_run(server)
    manager = server.gateway.manager
    registry = manager.registry
    began = asyncio.Event()
    real_list, real_get = manager.list_checkpoints, registry.get_threads

    async def listing(*args: Any, **kw: Any) -> Any:
        began.set()
        return await real_list(*args, **kw)

    async def getting(*args: Any, **kw: Any) -> Any:
        await asyncio.wait_for(began.wait(), 10)
        return await real_get(*args, **kw)

    monkeypatch.setattr(manager, "list_checkpoints", listing)
    monkeypatch.setattr(registry, "get_threads", getting)
    query = """query($id: ID!, $first: Int, $ns: String) { thread(id: $id) { id
      checkpoints(first: $first, namespace: $ns) { edges { node { id values } } } } }"""
    body = await gql(server.http, query, {"id": run["threadId"], "first": 3, "ns": ""})
    monkeypatch.undo()
    direct = await server.gateway.list_checkpoints(run["threadId"], first=3)
    nodes = [e["node"] for e in data(body)["thread"]["checkpoints"]["edges"]]
    assert [n["id"] for n in nodes] == [v.checkpoint_id for v in direct.items]
    assert [n["values"] for n in nodes] == [v.values for v in direct.items]
    # Another namespace, read with the thread: that namespace's page (an empty one).
    body = await gql(server.http, query, {"id": run["threadId"], "first": 3, "ns": "sub"})
    assert data(body)["thread"]["checkpoints"]["edges"] == []


async def test_a_thread_not_there_is_answered_without_waiting_for_its_page(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page read with a thread is awaited only for a caller let see it: for an id
    with no thread (as for another's thread) the answer does not wait for the page,
    whose time would tell a thread from a missing one; the page, left to finish,
    fails unheard."""
    manager = server.gateway.manager
    began, release = asyncio.Event(), asyncio.Event()

    async def listing(*args: Any, **kw: Any) -> Any:
        began.set()
        await release.wait()
        raise RuntimeError("the page read ahead fails after the answer")

    monkeypatch.setattr(manager, "list_checkpoints", listing)
    query = "query($id: ID!) { thread(id: $id) { id checkpoints(first: 5) { edges { cursor } } } }"
    body = await asyncio.wait_for(gql(server.http, query, {"id": "nobody-made-this"}), 10)
    assert body["data"] == {"thread": None} and "errors" not in body
    assert began.is_set()  # it was read ahead, and is still reading
    release.set()
    await asyncio.sleep(0)


HISTORY = """query($id: ID!, $first: Int, $after: String) { thread(id: $id) { id
  checkpoints(first: $first, after: $after) { edges { cursor node { id } } } } }"""


async def test_a_thread_history_pages_alike_in_any_shape(server: Server) -> None:
    """`thread { checkpoints }` for any arguments, two aliased pages, or a fragment:
    the pages the gateway reads directly, in order; an unknown thread is null."""
    run = await start_run(server)
    thread_id = run["threadId"]
    expected = [
        v.checkpoint_id for v in (await server.gateway.list_checkpoints(thread_id, first=100)).items
    ]
    pages = []
    for variables in ({}, {"first": 2}, {"first": None}):
        body = data(await gql(server.http, HISTORY, {"id": thread_id, **variables}))
        pages.append([e["node"]["id"] for e in body["thread"]["checkpoints"]["edges"]])
        cursor = body["thread"]["checkpoints"]["edges"][-1]["cursor"]
    assert pages == [expected[:20], expected[:2], expected[:20]]
    body = data(await gql(server.http, HISTORY, {"id": thread_id, "first": 2, "after": cursor}))
    assert [e["node"]["id"] for e in body["thread"]["checkpoints"]["edges"]] == (
        expected[len(pages[0]) : len(pages[0]) + 2]
    )
    assert data(await gql(server.http, HISTORY, {"id": "no-such-thread"})) == {"thread": None}
    two = """query($id: ID!) { thread(id: $id) { a: checkpoints(first: 1) { edges { node { id } } }
      b: checkpoints(first: 2) { edges { node { id } } } } }"""
    body = data(await gql(server.http, two, {"id": thread_id}))
    assert [e["node"]["id"] for e in body["thread"]["a"]["edges"]] == expected[:1]
    assert [e["node"]["id"] for e in body["thread"]["b"]["edges"]] == expected[:2]
    spread = """query($id: ID!) { thread(id: $id) { ... on Thread {
      checkpoints(first: 1) { edges { node { id } } } } } }"""
    body = data(await gql(server.http, spread, {"id": thread_id}))
    assert [e["node"]["id"] for e in body["thread"]["checkpoints"]["edges"]] == expected[:1]


async def test_a_refused_page_is_refused_at_checkpoints(server: Server) -> None:
    """A page the gateway refuses is an error at `checkpoints` (a non-null field: its
    null reaches `thread`)."""
    run = await start_run(server)
    for variables in ({"first": 1000}, {"first": 0}, {"after": "not a cursor"}):
        body = await gql(server.http, HISTORY, {"id": run["threadId"], **variables})
        assert codes(body) == ["BAD_USER_INPUT"], (variables, body)
        assert body["errors"][0]["path"] == ["thread", "checkpoints"], body
        assert body["data"] == {"thread": None}


async def test_only_an_exact_json_content_type_skips_strawberrys_parse(
    start: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`application/json` is read as it is; any other header, and any body that is not
    a query's, gets Strawberry's own parse and answers."""
    parsed: list[str] = []
    parse = async_base_view.parse_content_type

    def counting(header: str) -> tuple[str, dict[str, str]]:
        parsed.append(header)
        return parse(header)

    monkeypatch.setattr(async_base_view, "parse_content_type", counting)
    typename = json.dumps({"query": "{ __typename }"})

    async with start() as server:

        async def post(body: str, content_type: str) -> tuple[int, Any]:
            headers = {"content-type": content_type}
            response = await server.http.post("/graphql", content=body, headers=headers)
            return response.status_code, response.json()

        assert await post(typename, "application/json") == (
            200,
            {"data": {"__typename": "Query"}, "extensions": {"cost": 0}},
        )
        assert parsed == []
        for header in ("application/json; charset=utf-8", "application/json;charset=UTF-8"):
            status, body = await post(typename, header)
            assert status == 200 and data(body) == {"__typename": "Query"}
        assert parsed == ["application/json; charset=utf-8", "application/json;charset=UTF-8"]
        # A media type no GraphQL-over-HTTP server reads: HTTP's own 415.
        status, answer = await post(typename, "text/plain")
        assert status == 415 and codes(answer) == ["BAD_USER_INPUT"], answer
        assert "send the request as application/json" in answer["errors"][0]["message"]
        refused = {
            ("[1", "application/json"): "Unable to parse request body as JSON",
            ("1", "application/json"): "Unable to parse request body as JSON",
            ('{"query": 1}', "application/json"): "`query` must be a string or null",
            ('{"query": "{ a }", "variables": []}', "application/json"): "`variables` must",
            ('{"query": "{ a }", "extensions": 1}', "application/json"): "`extensions` must",
        }
        for (body, header), message in refused.items():
            status, answer = await post(body, header)
            assert status == 400 and codes(answer) == ["BAD_USER_INPUT"], answer
            assert message in answer["errors"][0]["message"]
        got = await server.http.get("/graphql", params={"query": "{ __typename }"})
        assert got.status_code == 200 and data(got.json()) == {"__typename": "Query"}


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
async def test_a_batch_is_told_batches_are_not_supported(start: Starter, content_type: str) -> None:
    """A JSON array of operations is JSON: "Unable to parse request body as JSON" misled
    its client. Batching is not served; the answer says so, with no operation run."""
    batch = json.dumps([{"query": "{ __typename }"}, {"query": "{ __typename }"}])
    async with start() as server:
        headers = {"content-type": content_type}
        response = await server.http.post("/graphql", content=batch, headers=headers)
        assert response.status_code == 400
        answer = response.json()
        assert codes(answer) == ["BAD_USER_INPUT"], answer
        assert answer["errors"][0]["message"].startswith("Batches are not supported")
        # A GET whose variables are an array is no batch: still not a JSON object.
        params = {"query": "{ __typename }", "variables": "[1]"}
        got = await server.http.get("/graphql", params=params)
        assert got.status_code == 400
        assert "the variables parameter must be a JSON object" in got.json()["errors"][0]["message"]


async def test_a_get_names_the_parameter_that_is_no_json_object(start: Starter) -> None:
    """A GET's `variables` or `extensions` that is not a JSON object was answered
    "Unable to parse request body as JSON": a GET has no body."""
    async with start() as server:
        for name in ("variables", "extensions"):
            for value in ("{bad", "1", "[1]"):
                params = {"query": "{ __typename }", name: value}
                got = await server.http.get("/graphql", params=params)
                assert got.status_code == 400, (name, value)
                answer = got.json()
                assert codes(answer) == ["BAD_USER_INPUT"], answer
                assert answer["errors"][0]["message"] == (
                    f"the {name} parameter must be a JSON object"
                ), answer
        query = "query($a: Int) { threads(first: $a) { totalCount } }"
        got = await server.http.get("/graphql", params={"query": query, "variables": '{"a": 1}'})
        assert got.status_code == 200 and data(got.json()) == {"threads": {"totalCount": 0}}


offsets = st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23))
zones = st.one_of(st.none(), st.just(UTC), offsets.map(timezone))


@settings(max_examples=500, deadline=None, database=None)
@given(value=st.datetimes(timezones=zones))
def test_datetimes_are_written_as_isoformat_writes_them(value: datetime) -> None:
    """`DateTime` is written by orjson: the text `isoformat()` gives, in UTC."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        expected = aware.astimezone(UTC).isoformat()
    except OverflowError:  # before year 1 or after 9999 in UTC: the same error
        with pytest.raises(OverflowError):
            serialize_datetime(value)
        return
    assert serialize_datetime(value) == expected


def test_a_datetime_subclass_is_written_as_isoformat_writes_it() -> None:
    """orjson refuses datetime subclasses (pendulum, freezegun, pandas' Timestamp);
    isoformat() took them, so they still take that way."""

    class Stamp(datetime):
        pass

    value = Stamp(2026, 11, 28, 12, 30, 5, 7, tzinfo=UTC)
    assert serialize_datetime(value) == "2026-11-28T12:30:05.000007+00:00"


class _CountedMeta(type):
    asked = 0

    def __instancecheck__(cls, instance: object) -> bool:
        _CountedMeta.asked += 1
        return False


class _NeverStreamed(metaclass=_CountedMeta):
    """Stands for Strawberry's `SubscriptionExecutionResult` Protocol: counts the asks."""


async def test_a_plain_answer_is_made_as_strawberrys_run_makes_it(
    start: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain result is answered without Strawberry's `run` asking its Protocol whether it
    streams (17 us a request), and as `run` answers it: the sub-response's status and
    headers, `_handle_errors` given the errors, the same body."""
    monkeypatch.setattr(async_base_view, "SubscriptionExecutionResult", _NeverStreamed)
    handled: list[list[str]] = []

    def handle(view: Any, errors: list[Any], response_data: Any) -> None:
        handled.append([e.message for e in errors])

    get_sub_response = GraphQLView.get_sub_response

    async def sub_response(view: Any, request: Any) -> Any:
        response = await get_sub_response(view, request)
        response.headers["x-sub"] = "kept"
        return response

    monkeypatch.setattr(GraphQLView, "_handle_errors", handle)
    monkeypatch.setattr(GraphQLView, "get_sub_response", sub_response)
    async with start() as server:
        _CountedMeta.asked = 0
        ok = await server.http.post("/graphql", json={"query": "{ __typename }"})
        assert ok.status_code == 200 and ok.headers["x-sub"] == "kept"
        assert ok.json() == {"data": {"__typename": "Query"}, "extensions": {"cost": 0}}
        refused = "{ threads(first: -1) { pageInfo { hasNextPage } } }"  # refused as it runs
        failed = await server.http.post("/graphql", json={"query": refused})
        assert failed.status_code == 200 and failed.headers["x-sub"] == "kept"
        assert codes(failed.json()) == ["BAD_USER_INPUT"]
        assert handled == [[failed.json()["errors"][0]["message"]]]
        assert _CountedMeta.asked == 0
        # A refused document's result is not a plain ExecutionResult: Strawberry's `run`
        # answers it, asking as before.
        invalid = await server.http.post("/graphql", json={"query": "{ nope }"})
        assert codes(invalid.json()) == ["BAD_USER_INPUT"] and invalid.headers["x-sub"] == "kept"
        assert _CountedMeta.asked == 1
