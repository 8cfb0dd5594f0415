"""A subscriber on one replica to a run elsewhere ends with the run's final event,
even when the notifications that should have told it are lost."""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest

from code_hero.runs.pgbus import LISTENER_NAME
from tests.graphql.clients import TransportWS
from tests.replicas.conftest import Cluster
from tests.replicas.test_replicas import (
    SUBSCRIBE,
    assert_contiguous,
    run_with_events,
    start_run,
    wait_steps,
)

pytestmark = pytest.mark.postgres

LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()"
)


def listener_pids(url: str) -> set[int]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute(LISTENERS, (LISTENER_NAME,)).fetchall()}


def kill_listeners(url: str) -> tuple[int, str]:
    """Terminate every replica's LISTEN connection (of this test's database only);
    how many, and the run's status at that moment."""
    with psycopg.connect(url, autocommit=True) as conn:
        killed = conn.execute(
            f"SELECT count(pg_terminate_backend(pid)) FROM ({LISTENERS}) AS l", (LISTENER_NAME,)
        ).fetchone()
        status = conn.execute("SELECT status FROM code_hero_runs").fetchone()
    assert killed is not None and status is not None
    return int(killed[0]), str(status[0])


async def test_subscriber_on_b_survives_killed_listeners(cluster: Cluster) -> None:
    a = cluster.start("a")
    b = cluster.start("b", CODE_HERO_MAX_CONCURRENT_RUNS="0")  # B serves, A executes
    before = listener_pids(cluster.url)
    assert len(before) == 2, "one named LISTEN connection per replica"
    run = await start_run(a, input={"delay": 1.0})
    async with TransportWS.connect(b.ws) as ws:
        await ws.subscribe("1", SUBSCRIBE, {"id": run["id"]})
        await wait_steps(a, run["id"], 1)
        killed, status = await asyncio.to_thread(kill_listeners, cluster.url)
        assert killed == 2
        assert status == "RUNNING", "the listeners died mid-run"
        payloads, end = await ws.collect("1", seconds=60)
    assert end is not None and end["type"] == "complete", end
    received = [p["data"]["runEvents"] for p in payloads]
    assert_contiguous(received)
    assert received[-1]["status"] == "SUCCESS"
    stored = (await run_with_events(a, run["id"]))["events"]
    assert [e["seq"] for e in received] == [e["seq"] for e in stored]
    after = listener_pids(cluster.url)
    assert len(after) == 2 and not after & before, "both replicas listen again"


async def test_run_finished_without_notifications_ends_the_subscription(
    cluster: Cluster,
) -> None:
    """The run's last events and its status are written behind the replicas' backs
    (no NOTIFY at all): the subscriber's re-check finds them and completes."""
    b = cluster.start("b", CODE_HERO_MAX_CONCURRENT_RUNS="0", CODE_HERO_EVENT_RECHECK_SECONDS="0.5")
    run = await start_run(b, input={})  # no replica executes it: it stays PENDING
    async with TransportWS.connect(b.ws) as ws:
        await ws.subscribe("1", SUBSCRIBE, {"id": run["id"]})
        first = await ws.next_message(seconds=30)
        assert first["payload"]["data"]["runEvents"]["status"] == "PENDING"
        with psycopg.connect(cluster.url) as conn:
            for seq, status in ((2, "RUNNING"), (3, "SUCCESS")):
                conn.execute(
                    "INSERT INTO code_hero_run_events (run_id, seq, thread_id, type, payload, at)"
                    " VALUES (%s, %s, %s, 'status', %s, now())",
                    (
                        run["id"],
                        seq,
                        run["threadId"],
                        json.dumps({"status": status, "error": None}),
                    ),
                )
            conn.execute(
                "UPDATE code_hero_runs SET status = 'SUCCESS', finished_at = now()"
                " WHERE run_id = %s",
                (run["id"],),
            )
        payloads, end = await ws.collect("1", seconds=60)
    assert end is not None and end["type"] == "complete", end
    assert [p["data"]["runEvents"]["seq"] for p in payloads] == [2, 3]
    assert payloads[-1]["data"]["runEvents"]["status"] == "SUCCESS"
