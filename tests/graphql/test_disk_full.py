"""A full PostgreSQL disk as GraphQL clients meet it: an outage, as SQLite's full file is.

The suite cannot fill the shared server's disk, so the database raises what a full
disk raises: a trigger on every table of the test's own database fails each new row
with SQLSTATE 53100 (disk_full) and PostgreSQL's own text ("could not extend file
...: No space left on device"), as the server did on a filled tmpfs. Dropping the
triggers is the space coming back. (tests/persistence/test_pg_disk_full.py fills a
real disk, on a cluster of its own.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import psycopg
import pytest

from code_hero.app import create_app
from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.settings import AppSettings
from tests.graphql.clients import gql
from tests.graphql.conftest import SLOW_GRAPH, Server, running
from tests.graphql.test_outage import wait_for_status

pytestmark = pytest.mark.postgres

START = """mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status } }"""
FAST = {"graph": "slow", "input": {}, "config": {"delay": 0}, "wait": True}
HEALTH = "{ health { status pendingSync backends { role lastError } } }"
WEBHOOK = """mutation { createWebhook(input: {url: "https://example.com/hook",
  events: [RUN_SUCCEEDED]}) { webhook { id } } }"""

# What PostgreSQL raised when the tmpfs under the database filled (its own words).
_FULL = """
CREATE FUNCTION disk_is_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file "base/16385/16448": No space left on device'
        USING ERRCODE = 'disk_full', HINT = 'Check free disk space.';
END $$;
DO $$
DECLARE t text;
BEGIN
    FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
        EXECUTE format('CREATE TRIGGER disk_is_full BEFORE INSERT OR UPDATE ON %I '
                       'FOR EACH ROW EXECUTE FUNCTION disk_is_full()', t);
    END LOOP;
END $$;
"""


def _fill(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_FULL.encode())


def _free(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP FUNCTION disk_is_full() CASCADE")


@pytest.fixture
async def server(pg_database: str) -> AsyncIterator[Server]:
    config = create_postgres_checkpointer(pg_database, health_check_interval=0.2)
    settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_GRAPH})
    async with running(create_app(AppSettings(gateway=settings))) as srv:
        yield srv


async def test_a_full_disk_is_an_outage_runs_go_on_and_everything_is_copied_back(
    server: Server, pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    old = await gql(server.http, START, {"input": FAST})
    old_thread = old["data"]["startRun"]["threadId"]
    caplog.set_level(logging.DEBUG, logger="code_hero")

    _fill(pg_database)
    # Runs on new threads start and end on the fallback, instead of INTERNAL.
    during = await gql(server.http, START, {"input": FAST})
    assert "errors" not in during, during
    run = during["data"]["startRun"]
    assert run["status"] == "SUCCESS"
    assert during["extensions"]["degraded"] is True

    # What only the database holds: UNAVAILABLE with retryAfter, saying why.
    for query, variables in (
        ("query($id: ID!) { thread(id: $id) { id } }", {"id": old_thread}),
        (START, {"input": {**FAST, "threadId": old_thread}}),
        ("mutation($id: ID!) { deleteThread(id: $id) { deleted } }", {"id": old_thread}),
        (WEBHOOK, None),
    ):
        body = await gql(server.http, query, variables)
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "UNAVAILABLE", (query, error)
        assert error["extensions"]["retryAfter"] >= 1
        assert "out of disk space" in error["message"], error

    # Degraded until there is room (several probes and copy-backs meanwhile), saying
    # why. Here the probe's temporary file goes in (only the tables are "full"), so
    # each copy-back is tried and stops on the trigger; lastError is empty between
    # a probe and the copy-back's stop.
    said = set()
    for _ in range(5):
        await asyncio.sleep(0.25)
        health = (await gql(server.http, HEALTH))["data"]["health"]
        assert health["status"] == "DEGRADED", health
        assert health["pendingSync"] > 0
        said |= {b["lastError"] for b in health["backends"] if b["role"] == "primary"}
    assert said - {None} == {"disk full"}, said

    _free(pg_database)
    await wait_for_status(server, "HEALTHY")
    read = await gql(server.http, "query($id: ID!) { thread(id: $id) { id } }", {"id": old_thread})
    assert read["data"]["thread"] == {"id": old_thread}
    with psycopg.connect(pg_database) as conn:
        stored = conn.execute(
            """SELECT status,
                      (SELECT count(*) FROM code_hero_run_events e WHERE e.run_id = r.run_id),
                      (SELECT max(seq) FROM code_hero_run_events e WHERE e.run_id = r.run_id),
                      (SELECT count(*) FROM checkpoints c WHERE c.thread_id = r.thread_id)
               FROM code_hero_runs r WHERE run_id = %s""",
            (run["id"],),
        ).fetchone()
    assert stored is not None
    status, events, last_seq, checkpoints = stored
    assert status == "SUCCESS" and events == last_seq > 0 and checkpoints > 0

    # One line when it began, one when it ended; no traceback, no ERROR, no INTERNAL.
    ours = [r for r in caplog.records if r.name.startswith("code_hero")]
    assert not [r for r in ours if r.exc_info], [r.getMessage() for r in ours if r.exc_info]
    assert not [r for r in ours if r.levelno >= logging.ERROR]
    warned = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert len(warned) == 2, warned
    assert "switching to fallback" in warned[0] and "serves again" in warned[1]


async def test_a_waiter_for_a_run_the_full_disk_holds_is_told_why(
    server: Server, pg_database: str
) -> None:
    # startRun(wait) for a run admitted in PostgreSQL, not claimed here yet, when the
    # disk fills: the run is recorded and goes on once there is room, and the message
    # says what the administrator must fix (it said "unreachable").
    server.gateway.executor.claims.max_concurrent = 0  # admitted, never claimed here
    waiter = asyncio.create_task(gql(server.http, START, {"input": FAST}))
    for _ in range(200):
        with psycopg.connect(pg_database) as conn:
            if conn.execute("SELECT count(*) FROM code_hero_runs").fetchone() == (1,):
                break
        await asyncio.sleep(0.05)
    _fill(pg_database)
    # A write meets the full disk: the outage begins.
    other = await gql(server.http, START, {"input": {**FAST, "wait": False}})
    assert "errors" not in other, other
    (error,) = (await asyncio.wait_for(waiter, 30))["errors"]
    assert error["extensions"]["code"] == "UNAVAILABLE", error
    assert error["extensions"]["runId"], error
    assert "out of disk space" in error["message"], error
    _free(pg_database)
    await wait_for_status(server, "HEALTHY")
