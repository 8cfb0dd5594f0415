"""Each request limit, on by default and configurable."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from graphql import parse
from starlette.types import Message, Receive, Scope, Send
from websockets.exceptions import ConnectionClosed

from code_hero.app import BodySizeLimit
from code_hero.schema.errors import TOO_COMPLEX_TO_VALIDATE
from code_hero.schema.extensions import MAX_SPREAD_DEPTH, MIN_EXPANDED_FIELDS, expanded_fields
from code_hero.schema.variables import MAX_INPUT_OBJECTS, MAX_LIST_ITEMS
from code_hero.settings import Limits
from tests.graphql.clients import LegacyWS, TransportWS, codes, data, eventually, gql
from tests.graphql.conftest import Starter

DEEP = "{ runs { edges { node { thread { runs { edges { node { thread { id } } } } } } } } }"


async def test_query_depth(start: Starter) -> None:
    async with start(Limits(max_depth=5)) as server:
        body = await gql(server.http, DEEP)
        assert codes(body) == ["BAD_USER_INPUT"] and "depth" in body["errors"][0]["message"]
        assert data(await gql(server.http, "{ runs { edges { node { thread { id } } } } }"))
    async with start() as server:  # the default (10) lets a reasonable query through
        assert data(await gql(server.http, DEEP))


def fragment_bomb(levels: int) -> str:
    """A query of `levels` fragments, each spreading the one before twice: 2^levels
    `health { status }` once spread, in a few hundred bytes per ten levels."""
    fragments = ["fragment F0 on Query { health { status } }"]
    fragments += [f"fragment F{i} on Query {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, levels)]
    return f"query {{ ...F{levels - 1} }}\n" + "\n".join(fragments)


def test_expanded_fields_counts_each_fragment_once_and_stops_past_the_limit() -> None:
    assert expanded_fields(parse(fragment_bomb(4)), 1000) == 2 * 2**3
    assert expanded_fields(parse(fragment_bomb(4)), 10) == 11
    assert expanded_fields(parse(fragment_bomb(200)), 10**6) == 10**6 + 1  # at once
    inline = "{ runs { edges { ... on RunEdge { node { id } } } } }"
    assert expanded_fields(parse(inline), 100) == 4
    cycle = "{ ...A } fragment A on Query { graphs { name } ...A }"
    assert expanded_fields(parse(cycle), 100) == 2  # validation refuses the cycle


async def test_a_fragment_bomb_is_refused_before_validation_walks_it(start: Starter) -> None:
    async with start() as server:
        # 2^40 fields: Strawberry's depth limiter alone walked them for minutes, holding
        # the event loop (an outside audit: /healthz stopped answering).
        body = await gql(server.http, fragment_bomb(40))
        assert codes(body) == ["QUERY_TOO_COMPLEX"], body
        assert f"more than {MIN_EXPANDED_FIELDS} fields" in body["errors"][0]["message"]
        assert data(await gql(server.http, fragment_bomb(8)))  # 256 fields: served
        # A chain of 600 fragments, each spreading the next (within the token limit):
        # graphql-core's validation overflowed Python's stack on it, an INTERNAL error.
        chain = [f"fragment F{i} on Query {{ ...F{i + 1} }}" for i in range(600)]
        chain.append("fragment F600 on Query { health { status } }")
        body = await gql(server.http, "query { ...F0 }\n" + "\n".join(chain))
        assert codes(body) == ["QUERY_TOO_COMPLEX"], body
        assert f"more than {MAX_SPREAD_DEPTH} deep" in body["errors"][0]["message"]
        short = [f"fragment F{i} on Query {{ ...F{i + 1} }}" for i in range(20)]
        short.append("fragment F20 on Query { health { status } }")
        assert data(await gql(server.http, "query { ...F0 }\n" + "\n".join(short)))
        assert data(await gql(server.http, "{ health { status } }"))


def side_by_side(count: int, fields: str = "health { status }", on: str = "Query") -> str:
    """`count` fragments of `fields` spread side by side in one selection set."""
    fragments = " ".join(f"fragment F{i} on {on} {{ {fields} }}" for i in range(count))
    return f"{fragments} {{ {' '.join(f'...F{i}' for i in range(count))} }}"


def chains(count: int, length: int) -> str:
    """`count` chains of `length` fragments, each selecting a field and spreading the
    next, their heads spread side by side."""
    fragments = [
        f"fragment Z{c}_{j} on Query {{ health {{ status }}"
        + (f" ...Z{c}_{j + 1} }}" if j + 1 < length else " }")
        for c in range(count)
        for j in range(length)
    ]
    return f"{{ {' '.join(f'...Z{c}_0' for c in range(count))} }} " + " ".join(fragments)


async def test_a_document_too_costly_to_validate_is_refused_in_bounded_time(
    start: Starter,
) -> None:
    async with start() as server:
        # Within the token limit, each held the event loop 1.2 to 5 s in graphql-core's
        # check that fields of one name can be merged (it compares them pairwise), before
        # its own work budget (500,000 units) ended it with "Validation aborted."
        # (BAD_USER_INPUT). MERGE_BUDGET ends each in well under a second.
        hostile = [
            "{ " + "health { status } " * 600 + "}",  # one field, 600 times
            side_by_side(400),  # 400 one-field fragments side by side
            chains(10, 40),  # ten chains of forty
            # thirty copies of a field, each with ten copies of a subfield
            "{ " + ("health { " + "backends { role } " * 10 + "} ") * 30 + "}",
            # 200 copies: a valid document that graphql-core's own budget lets through
            # after 99,500 units of work (about 0.4 s), past MERGE_BUDGET (50,000).
            "{ " + "health { status } " * 200 + "}",
        ]
        for document in hostile:
            body = await gql(server.http, document)
            assert codes(body) == ["QUERY_TOO_COMPLEX"], body
            assert body["errors"][0]["message"] == TOO_COMPLEX_TO_VALIDATE
        # A client's documents spend far less: twenty copies of a field; sixty fragments of
        # one type spread side by side, each selecting what the others do.
        assert data(await gql(server.http, "{ " + "health { status } " * 20 + "}"))
        fields = "id status metadata createdAt updatedAt"
        relay = side_by_side(60, fields, on="Thread").replace(
            " { ...F0", ' { thread(id: "t") { ...F0'
        )
        body = await gql(server.http, relay + " }")
        assert "errors" not in body, body
        # Validation aborted for too many errors is still the document's fault, not its cost.
        body = await gql(server.http, "{ " + " ".join(f"nope{i}" for i in range(150)) + " }")
        assert body["errors"][-1]["message"].startswith("Too many validation errors"), body
        assert set(codes(body)) == {"BAD_USER_INPUT"}


async def test_variables_holding_more_than_any_input_takes_are_refused_first(
    start: Starter,
) -> None:
    count = "query($f: ThreadFilter) { threads(filter: $f) { totalCount } }"
    async with start() as server:
        # 200,000 sub-filters (800 KB): converted one by one before the filter's own
        # limit (100) refused them, they held the server 25 s (an outside audit).
        body = await gql(server.http, count, {"f": {"anyOf": [{}] * 200_000}})
        assert codes(body) == ["BAD_USER_INPUT"], body
        assert body["errors"][0]["message"] == (
            f"$f holds a list of 200000 items (at most {MAX_LIST_ITEMS}): more than any input takes"
        )
        # Input objects counted in all, however they nest: 101 lists of 100.
        nested = {"anyOf": [{"anyOf": [{"userId": "u"}] * 100}] * 100, "not": {}}
        body = await gql(server.http, count, {"f": nested})
        assert body["errors"][0]["message"] == (
            f"$f holds more than {MAX_INPUT_OBJECTS} input objects in all: "
            "more than any input takes"
        )
        # What the inputs' own rules take is served, or refused by those rules: 11
        # sub-filters of 1,000 ids each (11,000 ids in all), a list just past a rule.
        ids = [f"t-{i}" for i in range(1000)]
        assert data(await gql(server.http, count, {"f": {"anyOf": [{"ids": ids}] * 11}}))
        body = await gql(server.http, count, {"f": {"anyOf": [{}] * 101}})
        assert "more than 100 sub-filters" in body["errors"][0]["message"]
        # A JSON value is one value, however large: its own rule judges it.
        meta = {"metadata": {"tags": list(range(20_000))}}
        body = await gql(server.http, count, {"f": meta})
        assert "filter.metadata may hold at most 100 values" in body["errors"][0]["message"]


async def test_aliases(start: Starter) -> None:
    async with start(Limits(max_aliases=2)) as server:
        body = await gql(
            server.http, "{ a: graphs { name } b: graphs { name } c: graphs { name } }"
        )
        assert codes(body) == ["BAD_USER_INPUT"] and "aliases" in body["errors"][0]["message"]
        assert data(await gql(server.http, "{ a: graphs { name } b: graphs { name } }"))


async def test_tokens(start: Starter) -> None:
    long_query = "{ " + " ".join(f"f{i}: graphs {{ name }}" for i in range(10)) + " }"
    async with start(Limits(max_tokens=30, max_aliases=0)) as server:
        body = await gql(server.http, long_query)
        assert codes(body) == ["BAD_USER_INPUT"] and "tokens" in body["errors"][0]["message"]
        assert data(await gql(server.http, "{ graphs { name } }"))


async def test_request_body_size(start: Starter) -> None:
    padding = "x" * 2000
    query = f"{{ graphs {{ name }} }} # {padding}"
    async with start(Limits(max_body_bytes=1000)) as server:
        declared = await server.http.post("/graphql", json={"query": query})
        assert declared.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            body = ('{"query": "' + query + '"}').encode()
            for i in range(0, len(body), 300):
                yield body[i : i + 300]

        streamed = await server.http.post(
            "/graphql", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert "content-length" not in streamed.request.headers

        small = await server.http.post("/graphql", json={"query": "{ graphs { name } }"})
        assert small.status_code == 200


async def test_a_chunked_body_is_counted_whatever_length_it_declares() -> None:
    """Transfer-Encoding wins over Content-Length (RFC 9112): the bytes are counted."""
    seen: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    parts = [b"x" * 600, b"x" * 600, b""]

    async def receive() -> Message:
        body = parts.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")]
    scope = {"type": "http", "method": "POST", "path": "/graphql", "headers": headers}
    await BodySizeLimit(app, max_bytes=1000)(scope, receive, send)
    assert sent[0]["status"] == 413 and len(seen) == 1


async def test_page_size(start: Starter) -> None:
    async with start() as server:
        for query in (
            "{ threads(first: 101) { edges { cursor } } }",
            "{ runs(first: 101) { edges { cursor } } }",
        ):
            body = await gql(server.http, query)
            assert codes(body) == ["BAD_USER_INPUT"] and "100" in body["errors"][0]["message"]
        run = data(
            await gql(
                server.http,
                'mutation { startRun(input: {message: "hi", wait: true}) { threadId } }',
            )
        )["startRun"]
        history = await gql(
            server.http,
            "query($t: ID!) { thread(id: $t) { checkpoints(first: 101) { edges { cursor } } } }",
            {"t": run["threadId"]},
        )
        assert codes(history) == ["BAD_USER_INPUT"]
        assert data(await gql(server.http, "{ threads(first: 100) { edges { cursor } } }"))
    async with start(Limits(max_page=5)) as server:  # a lower configured limit
        body = await gql(server.http, "{ threads(first: 6) { edges { cursor } } }")
        assert codes(body) == ["BAD_USER_INPUT"] and "5" in body["errors"][0]["message"]


async def test_a_higher_page_limit(start: Starter) -> None:
    async with start(Limits(max_page=150)) as server:
        for query in (
            "{ threads(first: 150) { edges { cursor } } }",
            "{ runs(first: 150) { edges { cursor } } }",
        ):
            assert data(await gql(server.http, query)) is not None


async def test_message_length(start: Starter) -> None:
    # The gateway enforces the length its settings carry (settings_from_env
    # sets it from CODE_HERO_MAX_MESSAGE_LENGTH, like Limits.max_message_length).
    async with start(gateway_fields={"max_message_length": 10}) as server:
        query = "mutation($m: String!) { startRun(input: {message: $m}) { id } }"
        too_long = await gql(server.http, query, {"m": "x" * 11})
        assert codes(too_long) == ["BAD_USER_INPUT"]
        assert "limit is 10" in too_long["errors"][0]["message"]
        assert data(await gql(server.http, query, {"m": "x" * 10}))


async def test_subscriptions_per_connection(start: Starter) -> None:
    async with start(Limits(max_subscriptions=2)) as server:
        run = data(
            await gql(
                server.http,
                'mutation { startRun(input: {message: "hi", wait: true}) { threadId } }',
            )
        )["startRun"]
        query = "subscription($t: ID!) { threadEvents(threadId: $t) { seq } }"
        variables = {"t": run["threadId"]}
        async with TransportWS.connect(server.ws_url) as ws:
            await ws.subscribe("1", query, variables)
            await ws.subscribe("2", query, variables)
            await ws.subscribe("3", query, variables)
            refused = await ws.next_message()
            assert refused["id"] == "3" and refused["type"] == "error"
            assert "limit" in refused["payload"][0]["message"].lower()
            await eventually(lambda: server.gateway.bus.subscriber_count == 2)
            await ws.complete("1")  # a slot frees up once one completes
            # The server drops the operation, then its stream leaves the bus.
            await eventually(lambda: server.gateway.bus.subscriber_count == 1)
            await ws.subscribe("4", query, variables)
            await ws.subscribe("5", query, variables)
            refused = await ws.next_message()
            assert refused["id"] == "5" and refused["type"] == "error"
        async with LegacyWS.connect(server.ws_url) as legacy:
            for op in ("1", "2", "3"):
                await legacy.start(op, query, variables)
            _, error = await legacy.collect("3")
            assert error["type"] == "error" and "limit" in error["payload"]["message"].lower()


async def test_connection_init_timeout(start: Starter) -> None:
    async with start(Limits(ws_init_timeout=0.2)) as server:
        async with TransportWS.connect(server.ws_url, init=False) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.receive(seconds=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
