"""The app around the schema: health, metrics, GraphiQL, GET queries, the lifespan."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from code_hero.config import create_sqlite_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from tests.faults import until
from tests.graphql.clients import codes, data, gql, sse
from tests.graphql.conftest import SLOW_GRAPH, Server, Starter


async def test_healthz(server: Server) -> None:
    response = await server.http.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    report = response.json()
    assert report["overall_status"] == "healthy"
    primary = next(b for b in report["backends"] if b["role"] == "primary")
    assert primary["healthy"] and primary["active"] and primary["checked_at"]


async def test_health_names_no_adopted_file_without_a_durable_fallback(server: Server) -> None:
    query = "{ health { adoptions { file since pendingSync } lastAdoption { file error } } }"
    body = data(await gql(server.http, query))
    assert body["health"] == {"adoptions": [], "lastAdoption": None}


class UnhealthyGateway(Gateway):
    """No backend stores checkpoints (as after every backend failed)."""

    async def health(self) -> dict[str, Any]:
        report = await super().health()
        return {**report, "overall_status": "unhealthy"}


async def test_healthz_unhealthy_is_503(start: Starter, tmp_path: Any) -> None:
    settings = GatewaySettings(checkpointer=create_sqlite_checkpointer(str(tmp_path / "u.sqlite")))
    async with UnhealthyGateway(settings) as gateway, start(gateway=gateway) as server:
        response = await server.http.get("/healthz")
        assert response.status_code == 503
        assert response.json()["overall_status"] == "unhealthy"
        body = data(await gql(server.http, "{ health { status } }"))
        assert body["health"]["status"] == "UNHEALTHY"


async def test_metrics(start: Starter) -> None:
    async with start() as server:
        await gql(server.http, "{ graphs { name } }")
        await gql(server.http, 'mutation { startRun(input: {message: "hi", wait: true}) { id } }')
        missing = "00000000-0000-4000-8000-000000000000"  # a well-formed run id no run has
        await gql(server.http, f'mutation {{ cancelRun(id: "{missing}") {{ id }} }}')
        await gql(server.http, "{ nope }")
        response = await server.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in (
        'code_hero_graphql_operations_total{operation_type="query",status="ok"} 1.0',
        'code_hero_graphql_operations_total{operation_type="mutation",status="ok"} 1.0',
        'code_hero_graphql_operations_total{operation_type="mutation",status="NOT_FOUND"} 1.0',
        'code_hero_graphql_operations_total{operation_type="query",status="BAD_USER_INPUT"} 1.0',
        'code_hero_checkpointer_status{status="healthy"} 1.0',
        "code_hero_subscribers 0.0",
        "code_hero_active_runs 0.0",
        "code_hero_pending_sync 0.0",
        "code_hero_adopted_files 0.0",
        "code_hero_adoptions_total 0.0",
        'code_hero_internal_entries{map="executor.started"} 0.0',
        'code_hero_internal_entries{map="bus.runs"} 0.0',
    ):
        assert line in text, line
    for name in (
        "code_hero_checkpoint_operations_total{",
        "code_hero_checkpoint_operation_errors_total{",
        "code_hero_checkpoint_operation_seconds_bucket{",
        "code_hero_fallback_switches_total",
        "code_hero_recoveries_total",
    ):
        assert name in text, name
    assert "python_gc" not in text  # a registry of its own, not the global one


async def test_metrics_families_in_their_order(start: Starter) -> None:
    """The order prometheus-client's registry gave before the counters were plain."""
    async with start() as server:
        await gql(server.http, "{ graphs { name } }")
        text = (await server.http.get("/metrics")).text
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert families == [
        "code_hero_checkpoint_operations_total",
        "code_hero_checkpoint_operation_errors_total",
        "code_hero_checkpoint_operation_seconds",
        "code_hero_checkpoint_errors_total",
        "code_hero_fallback_switches_total",
        "code_hero_recoveries_total",
        "code_hero_synced_items_total",
        "code_hero_pending_sync",
        "code_hero_quarantined",
        "code_hero_subscribers",
        "code_hero_active_runs",
        "code_hero_internal_entries",
        "code_hero_checkpointer_status",
        "code_hero_adopted_files",  # added after: dead replicas' fallback files
        "code_hero_adopted_pending_sync",
        "code_hero_adoptions_total",
        "code_hero_adoption_failures_total",
        "code_hero_graphql_operations_total",
        "code_hero_graphql_operations_created",
    ]


# One query, then a scrape, in a process of its own: prometheus-client reads
# PROMETHEUS_DISABLE_CREATED_SERIES when it is imported.
SCRAPE = """
import asyncio, httpx
from code_hero.app import create_app

async def scrape() -> None:
    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            assert (await http.post("/graphql", json={"query": "{ __typename }"})).is_success
            print((await http.get("/metrics")).text)

asyncio.run(scrape())
"""


@pytest.mark.parametrize(
    ("disable", "before", "created"),
    [
        (None, "", True),
        ("True", "", False),
        ("1", "", False),
        (None, "import prometheus_client; prometheus_client.disable_created_metrics()", False),
    ],
)
def test_metrics_created_series_as_prometheus_client_writes_them(
    disable: str | None, before: str, created: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_DISABLE_CREATED_SERIES"}
    if disable is not None:
        env["PROMETHEUS_DISABLE_CREATED_SERIES"] = disable
    text = subprocess.run(
        [sys.executable, "-c", before + SCRAPE], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert 'code_hero_graphql_operations_total{operation_type="query",status="ok"} 1.0' in text
    assert ('code_hero_graphql_operations_created{operation_type="query"' in text) is created
    assert ("_created" in text) is created


async def test_metrics_count_subscriptions_by_outcome(start: Starter) -> None:
    """A stream is counted once, when it ends: "ok", or the code of its first error."""
    events = "subscription($run: ID!) { runEvents(runId: $run) { seq } }"
    async with start() as server:
        body = await gql(
            server.http, 'mutation { startRun(input: {message: "hi", wait: true}) { id } }'
        )
        run = data(body)["startRun"]["id"]
        assert (await sse(server.http, events, {"run": run}))[-1] == ("complete", None)
        missing = await sse(server.http, events, {"run": "00000000-0000-4000-8000-000000000000"})
        assert codes(missing[0][1]) == ["NOT_FOUND"]
        text = (await server.http.get("/metrics")).text
    counter = 'code_hero_graphql_operations_total{operation_type="subscription",status='
    for status in ("ok", "NOT_FOUND"):
        assert f'{counter}"{status}"}} 1.0' in text, status


async def test_graphiql_and_get_queries(start: Starter) -> None:
    async with start() as server:
        page = await server.http.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 200 and "graphiql" in page.text.lower()
        got = await server.http.get("/graphql", params={"query": "{ graphs { name } }"})
        assert got.status_code == 200 and got.json()["data"]["graphs"][0]["name"] == "code_hero"
        mutation = await server.http.get(
            "/graphql", params={"query": 'mutation { cancelRun(id: "x") { id } }'}
        )
        assert mutation.status_code in (400, 405)  # mutations only over POST
        assert (await server.http.put("/graphql")).status_code == 405
    async with start(graphiql=False) as server:
        page = await server.http.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 404


async def test_a_refused_method_is_told_which_are_allowed(start: Starter) -> None:
    # HEAD was refused (by Strawberry, with no Allow) while every other 405's Allow
    # listed it (Starlette adds HEAD to a GET route): they must agree.
    async with start() as server:
        for method in ("HEAD", "PUT", "DELETE"):
            refused = await server.http.request(method, "/graphql")
            assert refused.status_code == 405, method
            allowed = {m.strip() for m in refused.headers["allow"].split(",")}
            assert allowed == {"GET", "POST"}, (method, allowed)


async def test_a_passed_gateway_is_left_open(start: Starter, tmp_path: Any) -> None:
    settings = GatewaySettings(checkpointer=create_sqlite_checkpointer(str(tmp_path / "p.sqlite")))
    async with Gateway(settings) as gateway:
        async with start(gateway=gateway) as server:
            assert codes(await gql(server.http, "{ graphs { name } }")) == []
        assert (await gateway.health())["overall_status"] == "healthy"  # still usable


async def test_a_stop_cuts_sse_subscriptions_but_lets_queries_and_mutations_answer(
    start: Starter,
) -> None:
    """At a stop (serve's SIGTERM sets `stopping`) a subscription over SSE is cut, so
    uvicorn can go on to the lifespan's drain; a mutation sent over SSE runs inside its
    stream too, and was cut with it: a `startRun(wait)` left its run going and its id
    untold. It now answers (naming its run), then its stream completes."""
    sse_headers = {"accept": "text/event-stream"}
    start_run = (
        'mutation { startRun(input: {graph: "slow", input: {}, config: {delay: 0.3}, wait: true}) '
        "{ id status } }"
    )
    async with start() as server:
        thread = data(await gql(server.http, "mutation { createThread(input: {}) { id } }"))
        watch = {
            "query": "subscription($t: ID!) { threadEvents(threadId: $t) { seq } }",
            "variables": {"t": thread["createThread"]["id"]},
        }

        async def streamed(body: dict[str, Any]) -> str:
            async with server.http.stream(
                "POST", "/graphql", json=body, headers=sse_headers
            ) as response:
                assert response.status_code == 200
                return (await response.aread()).decode()

        subscribed = asyncio.create_task(streamed(watch))
        mutated = asyncio.create_task(streamed({"query": start_run}))

        async def admitted() -> bool:  # the mutation is under way, inside its stream
            body = data(await gql(server.http, "{ runs { totalCount } }"))
            return bool(body["runs"]["totalCount"])

        await until(admitted)
        server.app.state.stopping.set()
        answered, cut = await asyncio.wait_for(asyncio.gather(mutated, subscribed), 20)
    # The waiting start answers at once (the stop's own answer: UNAVAILABLE naming the
    # run, which goes on), and its stream completes; the subscription's is cut.
    assert '"code":"UNAVAILABLE"' in answered and '"runId":"' in answered, answered
    assert "event: complete" in answered, answered
    assert "event: complete" not in cut, cut


async def test_a_stop_answers_the_waiting_starts_of_its_own_app_only(
    start: Starter, tmp_path: Any
) -> None:
    """Two apps sharing one gateway (`create_app` given it): one app's stop answered the
    waiting starts of both, and every one begun on either from then on, since the
    gateway was told to stop waiting. Now only the stopping app's are answered."""
    settings = GatewaySettings(
        checkpointer=create_sqlite_checkpointer(str(tmp_path / "shared.sqlite")),
        graphs={"slow": SLOW_GRAPH},
    )
    start_run = (
        'mutation($d: Float!) { startRun(input: {graph: "slow", input: {}, config: {delay: $d}, '
        "wait: true}) { id status } }"
    )
    async with (
        Gateway(settings) as gateway,
        start(gateway=gateway) as stopping,
        start(gateway=gateway) as going,
    ):
        mine = asyncio.create_task(gql(stopping.http, start_run, {"d": 0.2}))
        theirs = asyncio.create_task(gql(going.http, start_run, {"d": 0.2}))

        async def admitted() -> bool:  # both recorded: each waits, or is about to
            body = data(await gql(going.http, "{ runs { totalCount } }"))
            return bool(body["runs"]["totalCount"] == 2)

        await until(admitted)
        stopping.app.state.stopping.set()
        told = await asyncio.wait_for(mine, 20)
        assert codes(told) == ["UNAVAILABLE"], told
        assert told["errors"][0]["extensions"]["runId"]
        # The other app's wait goes on to its run's end, and so does one begun after.
        ran = data(await asyncio.wait_for(theirs, 30))
        assert ran["startRun"]["status"] == "SUCCESS"
        later = data(await gql(going.http, start_run, {"d": 0}))
        assert later["startRun"]["status"] == "SUCCESS"


@pytest.mark.parametrize("content_type", ["Application/JSON", "APPLICATION/JSON; charset=UTF-8"])
async def test_the_json_media_type_is_case_insensitive(start: Starter, content_type: str) -> None:
    """RFC 9110 (8.3.1): type and subtype are case-insensitive. Strawberry looks for the
    substring `application/json`, so a client that spells it otherwise got 400
    'Unsupported content type'."""
    async with start() as srv:
        response = await srv.http.post(
            "/graphql",
            content=b'{"query": "{ health { status } }"}',
            headers={"content-type": content_type},
        )
        assert response.status_code == 200, response.text
        assert data(response.json())["health"]["status"] == "HEALTHY"
        # Strawberry's answers to a body that is not a query's are the same in any case.
        refused = await srv.http.post(
            "/graphql",
            content=b'{"query": "{ a }", "variables": []}',
            headers={"content-type": content_type},
        )
        assert refused.status_code == 400
        assert "`variables` must be an object" in refused.json()["errors"][0]["message"]
