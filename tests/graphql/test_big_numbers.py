"""Big numbers in what a caller sends: a float stays a float, an int past 64 bits is refused.

PostgreSQL's jsonb keeps the number 1e23 as `100000000000000000000000` (no scale), which
reads back as the Python int 10**23: a run given `{value: 1e23}` saw an int on
PostgreSQL (a float on memory and SQLite), and LangGraph's msgpack then failed the run
("Integer exceeds 64-bit range"); from 1e16 to 2**63 the run quietly saw an int. The same
held for a resume answer, a config value, run metadata and an edit's values (a checkpoint
keeps a float channel value in its jsonb). jsonb keeps a number's scale, so an integral
float is now written `100000000000000000000000.0`: every backend gives back what was sent.

An integer past 64 bits (2**70 as a variable or as a literal) failed the
run later on every backend (msgpack cannot carry it), and so did run metadata or config
holding one on the memory saver (LangGraph copies their top-level values into each
checkpoint's metadata; nested deeper it is never checkpointed). What reaches a graph now
refuses one: BAD_USER_INPUT naming the argument and where in it, nothing stored. Thread
metadata and filters still take one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from code_hero.app import create_app
from code_hero.config import create_memory_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.settings import AppSettings
from tests.graphql.clients import codes, data, gql
from tests.graphql.conftest import Server, checkpointer_for, running

NUMBERS_GRAPH = f"{Path(__file__).with_name('numbers_graph.py')}:graph"
RUN = "id threadId status error input output metadata"
START = f"mutation($i: StartRunInput!) {{ startRun(input: $i) {{ {RUN} }} }}"
READ = f"""query($r: ID!, $t: ID!) {{ run(id: $r) {{ {RUN} }}
  thread(id: $t) {{ values latestCheckpoint {{ metadata }} }} }}"""
UPDATE = "mutation($i: UpdateStateInput!) { updateState(input: $i) { id } }"
BIG = 2**70  # 1180591620717411303424
FLOATS = {"value": "float", "answer": "NoneType", "config": "float", "metadata": "float"}


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    """The app with the numbers graph, on each backend (memory too: its saver is msgpack)."""
    kind = str(request.param)
    checkpointer = (
        create_memory_checkpointer()
        if kind == "memory"
        else checkpointer_for(kind, request, tmp_path)
    )
    settings = GatewaySettings(checkpointer=checkpointer, graphs={"numbers": NUMBERS_GRAPH})
    async with running(create_app(AppSettings(gateway=settings))) as srv:
        yield srv


def _typed(value: Any) -> Any:
    """`value` with each scalar paired with its type's name: 1e23 is no longer 10**23."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


async def _run(server: Server, **fields: Any) -> dict[str, Any]:
    run: dict[str, Any] = data(
        await gql(server.http, START, {"i": {"graph": "numbers", **fields}})
    )["startRun"]
    return run


async def _read(server: Server, run: dict[str, Any]) -> dict[str, Any]:
    return data(await gql(server.http, READ, {"r": run["id"], "t": run["threadId"]}))


async def test_a_float_stays_a_float_on_every_backend(
    server: Server, request: pytest.FixtureRequest
) -> None:
    # Every case on one server: a server per case would cost the suite seconds each.
    sent = {"value": 1e23, "list": [1.5e16, -1e17, 1e300, 0.5, 7]}
    run = await _run(server, input=sent, config={"x": 1e17}, metadata={"x": 1e23}, wait=True)
    assert run["status"] == "SUCCESS", run
    assert run["output"]["kinds"] == FLOATS
    assert _typed(run["output"]["value"]) == _typed(1e23)
    read = await _read(server, run)
    assert _typed(read["run"]["input"]) == _typed(sent)
    assert _typed(read["run"]["metadata"]) == _typed({"x": 1e23})
    assert _typed(read["thread"]["values"]["list"]) == _typed(sent["list"])
    assert _typed(read["thread"]["latestCheckpoint"]["metadata"]["x"]) == _typed(1e23)

    # A literal in the query: graphql-core reads `1e23` as the float.
    literal = data(
        await gql(
            server.http,
            'mutation { startRun(input: {graph: "numbers", input: {value: 1e23}, '
            f"config: {{x: 1e17}}, metadata: {{x: 1e16}}, wait: true}}) {{ {RUN} }} }}",
        )
    )["startRun"]
    assert literal["status"] == "SUCCESS", literal
    assert literal["output"]["kinds"] == FLOATS

    # An interrupt's answer, and a float channel value kept in the checkpoint across it.
    asked = await _run(server, input={"value": 1e17, "ask": True}, wait=True)
    assert asked["status"] == "INTERRUPTED", asked
    resumed = await _run(server, threadId=asked["threadId"], resume=1e23, wait=True)
    assert resumed["status"] == "SUCCESS", resumed
    assert resumed["output"]["kinds"] == {
        "value": "float",
        "answer": "float",
        "config": "NoneType",
        "metadata": "NoneType",
    }
    assert _typed(resumed["output"]["answer"]) == _typed(1e23)
    assert _typed((await _read(server, resumed))["run"]["input"]) == _typed({"resume": 1e23})

    # An edit's values, then a run from the edited state.
    data(await gql(server.http, UPDATE, {"i": {"threadId": run["threadId"], "values": sent}}))
    after = await _run(server, threadId=run["threadId"], input={"ask": False}, wait=True)
    assert after["status"] == "SUCCESS", after
    assert after["output"]["kinds"]["value"] == "float"
    assert _typed(after["output"]["list"]) == _typed(sent["list"])

    # The 64-bit range is taken whole (ormsgpack's signed and unsigned), as ints, and so
    # is a big integer that a run's config or metadata nests below its top level (only
    # the top level reaches a checkpoint's metadata).
    edges = {"value": 2**64 - 1, "list": [-(2**63)]}
    nested = {"x": {"y": BIG}}
    ints = await _run(server, input=edges, config=nested, metadata=nested, wait=True)
    assert ints["status"] == "SUCCESS", ints
    assert ints["output"]["kinds"]["value"] == "int"
    assert _typed((await _read(server, ints))["run"]["input"]) == _typed(edges)

    if "pg_database" in request.fixturenames:
        await _stored_in_postgresql(request.getfixturevalue("pg_database"), run["id"])


async def _stored_in_postgresql(url: str, run_id: str) -> None:
    """The rows themselves: each integral float kept with its scale, so jsonb says 1e23 is
    no integer (`.0`), in the registry's run and in the checkpoint's own jsonb."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT input->>'value', metadata->>'x', config->>'x' FROM code_hero_runs "
            "WHERE run_id = %s",
            [run_id],
        )
        assert await cur.fetchone() == (
            "100000000000000000000000.0",
            "100000000000000000000000.0",
            "100000000000000000.0",
        )
        cur = await conn.execute(
            "SELECT checkpoint->'channel_values'->>'value', metadata->>'x' FROM checkpoints "
            "WHERE metadata->>'run_id' = %s ORDER BY checkpoint_id DESC LIMIT 1",
            [run_id],
        )
        assert await cur.fetchone() == ("100000000000000000000000.0", "100000000000000000000000.0")


# Every JSON argument that reaches a graph (schema.graphql): what is refused, and where.
REFUSED: dict[str, tuple[str, dict[str, Any], str]] = {
    "startRun input": (
        START,
        {"i": {"graph": "numbers", "input": {"value": BIG}}},
        "input holds 1180591620717411303424 at $.value:",
    ),
    "startRun input literal": (
        'mutation { startRun(input: {graph: "numbers", input: {value: 1180591620717411303424}}) '
        "{ id } }",
        {},
        "input holds 1180591620717411303424 at $.value:",
    ),
    "startRun input negative": (
        START,
        {"i": {"graph": "numbers", "input": {"value": [1, -(2**63) - 1]}}},
        "input holds -9223372036854775809 at $.value[1]:",
    ),
    "startRun resume": (
        START,
        {"i": {"threadId": "t1", "resume": 2**64}},
        "resume holds 18446744073709551616 at $:",
    ),
    "startRun config": (
        START,
        {"i": {"graph": "numbers", "config": {"x": 2**64}}},
        "config holds 18446744073709551616 at $.x:",
    ),
    "startRun metadata": (
        START,
        {"i": {"graph": "numbers", "metadata": {"x": BIG}}},
        "metadata holds 1180591620717411303424 at $.x:",
    ),
    "updateState values": (
        UPDATE,
        {"i": {"threadId": "t1", "values": {"value": [BIG]}}},
        "values holds 1180591620717411303424 at $.value[0]:",
    ),
}
# What only the gateway's own tables keep takes any integer, as before (JSON text and
# jsonb carry them; tests/graphql/test_request_path.py reads one back).
TAKEN: dict[str, tuple[str, dict[str, Any]]] = {
    "createThread metadata": (
        "mutation($m: JSON) { createThread(input: {metadata: $m}) { metadata } }",
        {"m": {"x": BIG}},
    ),
    "threads filter": (
        "query($m: JSON) { threads(filter: {metadata: $m}) { totalCount } }",
        {"m": {"x": BIG}},
    ),
    "runs filter": (
        "query($m: JSON) { runs(filter: {metadata: $m}) { totalCount } }",
        {"m": {"x": BIG}},
    ),
}


async def test_an_integer_past_64_bits_is_refused_where_a_graph_would_get_it(
    server: Server,
) -> None:
    for name, (query, variables, said) in REFUSED.items():
        body = await gql(server.http, query, variables)
        assert codes(body) == ["BAD_USER_INPUT"], (name, body)
        message = body["errors"][0]["message"]
        assert said in message and "within 64 bits" in message, (name, message)
        assert not body.get("data"), (name, body)
    counts = await gql(server.http, "{ threads { totalCount } runs { totalCount } }")
    assert counts["data"] == {"threads": {"totalCount": 0}, "runs": {"totalCount": 0}}
    for name, (query, variables) in TAKEN.items():
        body = await gql(server.http, query, variables)
        assert "errors" not in body, (name, body)
    assert data(await gql(server.http, TAKEN["threads filter"][0], {"m": {"x": BIG}})) == {
        "threads": {"totalCount": 1}
    }
