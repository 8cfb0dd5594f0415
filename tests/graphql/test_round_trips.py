"""A page of threads and a thread's deletion over HTTP on PostgreSQL: one round trip
and one statement each (issue 15), with no BEGIN, COMMIT, SET or checkout check of
their own: what bench/peer.py's thread-list and delete rows send for each request.
Trips are counted as tests/pgtrips.py counts them (a wait that reads an answer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from code_hero.app import create_app
from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.settings import AppSettings
from tests.graphql.clients import data, gql
from tests.graphql.conftest import Server, running
from tests.pgtrips import count_pg_statements, count_pg_trips

pytestmark = pytest.mark.postgres

THREADS = """query { threads(first: 10) { edges { node {
  id status createdAt updatedAt metadata } } pageInfo { hasNextPage endCursor } } }"""
DELETE = "mutation($id: ID!) { deleteThread(id: $id) { deleted } }"
CREATE = "mutation { createThread(input: {}) { id } }"


@pytest.fixture
async def quiet_server(pg_database: str, tmp_path: Path) -> AsyncIterator[Server]:
    """The app on PostgreSQL with no health probe due while a test counts (an hour
    apart): every trip counted is a request's."""
    checkpointer = create_postgres_checkpointer(
        pg_database, pool_min_size=1, pool_max_size=4, health_check_interval=3600
    )
    settings = AppSettings(gateway=GatewaySettings(checkpointer=checkpointer))
    async with running(create_app(settings)) as server:
        yield server


async def test_a_page_of_threads_is_one_trip(
    quiet_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(12):
        data(await gql(quiet_server.http, CREATE))
    data(await gql(quiet_server.http, THREADS))  # the connection's statement prepared
    for _ in range(3):  # each request alike, not only the first after a warm-up
        trips = count_pg_trips(monkeypatch)
        sent = count_pg_statements(monkeypatch)
        page = data(await gql(quiet_server.http, THREADS))["threads"]
        monkeypatch.undo()
        assert len(page["edges"]) == 10 and page["pageInfo"]["hasNextPage"]
        assert len(trips) == 1
        assert len(sent) == 1 and sent[0].startswith("SELECT "), sent


async def test_a_deletion_is_one_trip(
    quiet_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [data(await gql(quiet_server.http, CREATE))["createThread"]["id"] for _ in range(4)]
    assert data(await gql(quiet_server.http, DELETE, {"id": ids.pop()}))["deleteThread"]["deleted"]
    for thread_id in ids:
        trips = count_pg_trips(monkeypatch)
        sent = count_pg_statements(monkeypatch)
        deleted = data(await gql(quiet_server.http, DELETE, {"id": thread_id}))["deleteThread"]
        monkeypatch.undo()
        assert deleted["deleted"]
        assert len(trips) == 1
        assert len(sent) == 1 and "code_hero_purge_thread" in sent[0], sent
    remaining = data(await gql(quiet_server.http, THREADS))["threads"]["edges"]
    assert remaining == []
