"""`/healthz` and `{ health }` answer at once while the primary database hangs.

The primary is a server that accepts connections and never answers. Before,
each health request probed it inline and waited on it. Our rule is no timed
assertions: each request is bounded by `asyncio.wait_for` at ANSWER_BOUND,
10x below the 2 s one inline attempt on this server takes (psycopg's shortest
connect timeout) and far above the few milliseconds an answer takes here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from code_hero.app import create_app
from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.persistence.slots import open_timeout
from code_hero.settings import AppSettings
from tests.conftest import PG_ADMIN_URL
from tests.faults import HungServer, with_port
from tests.graphql.clients import data, eventually, gql
from tests.graphql.conftest import SLOW_GRAPH, Server, running

ANSWER_BOUND = 0.2
HEALTH = (
    "{ health { status degradedSince quarantined backends { role healthy lastError checkedAt } } }"
)


@pytest.fixture
async def hung_server(tmp_path: Path) -> AsyncIterator[tuple[Server, HungServer]]:
    """The app with its primary on a hung server (the fallback serves)."""
    async with HungServer() as hung:
        checkpointer = create_postgres_checkpointer(
            with_port(PG_ADMIN_URL, hung.port), pool_timeout=1, health_check_interval=0.1
        )
        settings = AppSettings(
            gateway=GatewaySettings(checkpointer=checkpointer, graphs={"slow": SLOW_GRAPH})
        )
        async with running(create_app(settings)) as server:
            yield server, hung


async def _healthz(http: httpx.AsyncClient) -> httpx.Response:
    return await asyncio.wait_for(http.get("/healthz"), ANSWER_BOUND)


async def _health(http: httpx.AsyncClient) -> dict[str, Any]:
    health: dict[str, Any] = data(await asyncio.wait_for(gql(http, HEALTH), ANSWER_BOUND))["health"]
    return health


async def test_health_answers_at_once_while_the_primary_hangs(
    hung_server: tuple[Server, HungServer],
) -> None:
    server, hung = hung_server
    # The health loop is connecting to the hung server right now.
    accepted = hung.accepted
    await eventually(lambda: hung.accepted > accepted, 5)

    response = await _healthz(server.http)
    assert response.status_code == 200  # checkpoints are stored: on the fallback
    report = response.json()
    assert report["overall_status"] == "degraded"
    assert report["active_backend"] == "fallback"
    assert report["quarantined"] == 0 and "degraded_since" in report

    health = await _health(server.http)
    assert health["status"] == "DEGRADED"
    assert health["quarantined"] == 0
    primary = next(b for b in health["backends"] if b["role"] == "primary")
    assert primary["healthy"] is False
    assert "timeout" in primary["lastError"] or "timed out" in primary["lastError"]
    fallback = next(b for b in health["backends"] if b["role"] == "fallback")
    assert fallback["healthy"] is True

    # The loop goes on trying (each attempt bounded), and health keeps answering.
    manager = server.gateway.manager
    before = manager.router.primary.checked_at
    bound = open_timeout(server.gateway.settings.checkpointer) + 2
    await eventually(lambda: manager.router.primary.checked_at != before, bound)
    again = await _health(server.http)
    assert (
        next(b for b in again["backends"] if b["role"] == "primary")["checkedAt"]
        != primary["checkedAt"]
    )
    assert (await _healthz(server.http)).status_code == 200
