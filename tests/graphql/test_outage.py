"""A database outage as GraphQL clients meet it: runs start, the rest is UNAVAILABLE."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import pytest

from code_hero.app import create_app
from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.persistence.pg_backend import PostgresBackend
from code_hero.settings import AppSettings
from tests.conftest import PG_ADMIN_URL
from tests.faults import BlackHoleProxy, with_port
from tests.graphql.clients import gql
from tests.graphql.conftest import SLOW_GRAPH, Server, running

pytestmark = pytest.mark.postgres
PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432

START = """mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status } }"""
THREADS = "{ threads(first: 5) { edges { node { id status } } } }"
HEALTH = "{ health { status pendingSync quarantined degradedSince } }"


@pytest.fixture
async def outage_server(
    pg_database: str, tmp_path: Path
) -> AsyncIterator[tuple[Server, BlackHoleProxy]]:
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        # The outages here are refusals, seen at once: the probe's bound (pool_timeout)
        # only has to outlast a loaded machine, where 1 s failed over before the outage.
        config = create_postgres_checkpointer(
            with_port(pg_database, proxy.port), pool_timeout=3, health_check_interval=0.2
        )
        settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_GRAPH})
        async with running(create_app(AppSettings(gateway=settings))) as server:
            yield server, proxy


async def wait_for_status(server: Server, status: str, limit: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        body = await gql(server.http, HEALTH)
        health: dict[str, object] = body["data"]["health"]
        if health["status"] == status and (status != "HEALTHY" or health["pendingSync"] == 0):
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"health never became {status}")


async def test_clients_see_unavailable_not_internal_and_runs_keep_starting(
    outage_server: tuple[Server, BlackHoleProxy], caplog: pytest.LogCaptureFixture
) -> None:
    server, proxy = outage_server
    old = await gql(server.http, START, {"input": {"graph": "slow", "input": {}, "wait": True}})
    old_thread = old["data"]["startRun"]["threadId"]
    healthy = await gql(server.http, HEALTH)
    assert healthy["data"]["health"]["degradedSince"] is None
    assert "extensions" not in healthy or not healthy["extensions"].get("degraded")

    caplog.set_level(logging.WARNING)
    proxy.refuse()
    health = await wait_for_status(server, "DEGRADED")
    assert health["degradedSince"] is not None and health["quarantined"] == 0

    started = await gql(server.http, START, {"input": {"graph": "slow", "input": {}}})
    assert "errors" not in started, started
    assert started["extensions"]["degraded"] is True
    new_thread = started["data"]["startRun"]["threadId"]

    listing = await gql(server.http, THREADS)
    assert [e["node"]["id"] for e in listing["data"]["threads"]["edges"]] == [new_thread]
    assert listing["extensions"]["degraded"] is True

    for query, variables in (
        ("query($id: ID!) { thread(id: $id) { id } }", {"id": old_thread}),
        (START, {"input": {"graph": "slow", "input": {}, "threadId": old_thread}}),
    ):
        body = await gql(server.http, query, variables)
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "UNAVAILABLE", error
        assert error["extensions"]["retryAfter"] >= 1
        assert "unreachable" in error["message"]

    healthz = await server.http.get("/healthz")
    assert healthz.status_code == 200 and healthz.json()["overall_status"] == "degraded"

    proxy.forward()
    health = await wait_for_status(server, "HEALTHY")
    assert health["degradedSince"] is None
    listing = await gql(server.http, THREADS)
    assert {e["node"]["id"] for e in listing["data"]["threads"]["edges"]} == {
        old_thread,
        new_thread,
    }
    assert "degraded" not in listing.get("extensions", {})

    # One line when the outage began, one when it ended; no traceback, no INTERNAL.
    ours = [r for r in caplog.records if r.name.startswith("code_hero")]
    assert not [r for r in ours if r.exc_info], [r.getMessage() for r in ours if r.exc_info]
    assert not [r for r in ours if r.levelno >= logging.ERROR]
    persistence = [r.getMessage() for r in ours if r.name == "code_hero.persistence.fallback"]
    assert len(persistence) == 2, persistence
    assert "switching to fallback" in persistence[0]
    assert "serves again" in persistence[1]


async def test_a_saturated_pool_is_busy_not_an_outage(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = create_postgres_checkpointer(
        pg_database, pool_min_size=1, pool_max_size=1, pool_timeout=1, saver_instances=1
    )
    settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_GRAPH})
    async with running(create_app(AppSettings(gateway=settings))) as server:
        pool = cast(PostgresBackend, server.gateway.manager.router.primary.backend).pool
        caplog.set_level(logging.WARNING)
        async with contextlib.AsyncExitStack() as held:  # every connection, held by others
            for _ in range(pool.max_size):
                await held.enter_async_context(pool.connection())
            body = await gql(server.http, THREADS)
            # The webhook store (the primary's own tables, past the router) is judged alike.
            hooks = await gql(server.http, "{ webhooks { id } }")
        for answer in (body, hooks):
            (error,) = answer["errors"]
            assert error["extensions"]["code"] == "UNAVAILABLE", error
            assert error["extensions"]["retryAfter"] >= 1
            assert "busy" in error["message"]

        health = (await gql(server.http, HEALTH))["data"]["health"]
        assert health["status"] == "HEALTHY" and health["degradedSince"] is None
        assert "errors" not in await gql(server.http, THREADS)  # served by the primary
        ours = [r for r in caplog.records if r.name.startswith("code_hero")]
        assert not [r for r in ours if "switching to" in r.getMessage()]
        assert not [r for r in ours if r.exc_info or r.levelno >= logging.ERROR]


async def test_webhooks_in_an_outage_are_unavailable_not_internal(
    outage_server: tuple[Server, BlackHoleProxy], caplog: pytest.LogCaptureFixture
) -> None:
    """The webhook store lives in the primary's own tables, past the router's fallback:
    whether its call meets the outage first or the router already knows, the answer is
    UNAVAILABLE with retryAfter."""
    server, proxy = outage_server
    assert "errors" not in await gql(server.http, "{ webhooks { id } }")
    caplog.set_level(logging.WARNING)
    proxy.refuse()
    first = await gql(server.http, "{ webhooks { id } }")  # the probe may not know yet
    await wait_for_status(server, "DEGRADED")
    known = await gql(server.http, "{ webhooks { id } }")
    for body in (first, known):
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "UNAVAILABLE", error
        assert error["extensions"]["retryAfter"] >= 1
    proxy.forward()
    await wait_for_status(server, "HEALTHY")
    assert "errors" not in await gql(server.http, "{ webhooks { id } }")
    ours = [r for r in caplog.records if r.name.startswith("code_hero")]
    assert not [r for r in ours if r.exc_info or r.levelno >= logging.ERROR]
