"""Several `code-hero serve` processes on one PostgreSQL: shared runs, live events
everywhere, cancels that travel, no run lost to a dying or draining replica."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from typing import Any

import httpx
import psycopg
import pytest

from tests.graphql.clients import TransportWS, data, gql, until_finished
from tests.replicas.conftest import TLS, Cluster, Replica

pytestmark = pytest.mark.postgres

START = """mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status } }"""
EVENTS = """query($id: ID!) { run(id: $id) { status error output
  events(first: 1000) { seq __typename
    ... on NodeUpdate { node } ... on RunStatusChanged { status } } } }"""
SUBSCRIBE = """subscription($id: ID!) { runEvents(runId: $id) { seq __typename
  ... on RunStatusChanged { status } } }"""


async def start_run(replica: Replica, **fields: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=replica.http, timeout=30, verify=TLS) as client:
        return data(await gql(client, START, {"input": {"graph": "slow", **fields}}))["startRun"]


async def run_with_events(replica: Replica, run_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=replica.http, timeout=30, verify=TLS) as client:
        return data(await gql(client, EVENTS, {"id": run_id}))["run"]


async def finished(replica: Replica, run_id: str, limit: float = 60) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=replica.http, timeout=30, verify=TLS) as client:
        return await until_finished(client, run_id, seconds=limit)


def owner_of(url: str, run_id: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT lease_owner FROM code_hero_runs WHERE run_id = %s", (run_id,)
        ).fetchone()
        return None if row is None else row[0]


async def wait_steps(replica: Replica, run_id: str, steps: int) -> None:
    async with asyncio.timeout(30):
        while True:
            run = await run_with_events(replica, run_id)
            if sum(1 for e in run["events"] if e["__typename"] == "NodeUpdate") >= steps:
                return
            await asyncio.sleep(0.05)


def assert_contiguous(events: list[dict[str, Any]]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_run_on_a_subscribed_through_b(cluster: Cluster) -> None:
    a = cluster.start("a")
    b = cluster.start("b", CODE_HERO_MAX_CONCURRENT_RUNS="0")  # B serves, A executes
    run = await start_run(a, input={"delay": 0.3})
    async with TransportWS.connect(b.ws) as ws:
        await ws.subscribe("1", SUBSCRIBE, {"id": run["id"]})
        payloads, end = await ws.collect("1", seconds=60)
    assert end is not None and end["type"] == "complete", end
    received = [p["data"]["runEvents"] for p in payloads]
    stored = (await run_with_events(a, run["id"]))["events"]
    assert [e["seq"] for e in received] == [e["seq"] for e in stored]
    assert_contiguous(received)
    assert received[-1]["status"] == "SUCCESS"
    live = [e for e in received if e["seq"] > 2]
    assert len(live) > 10, "the subscriber followed the run live, not only by replay"


async def test_cancel_through_b_of_a_run_on_a(cluster: Cluster) -> None:
    a = cluster.start("a")
    # 6 steps of 3 s: only the cancel ends it soon (B's start-up under a loaded machine
    # took longer than a 6 s run, which then ended SUCCESS before it was asked).
    run = await start_run(a, input={"delay": 3.0})
    await wait_steps(a, run["id"], 1)
    b = cluster.start("b")
    async with httpx.AsyncClient(base_url=b.http, timeout=30, verify=TLS) as client:
        body = data(
            await gql(
                client, "mutation($id: ID!) { cancelRun(id: $id) { status } }", {"id": run["id"]}
            )
        )
    assert body["cancelRun"]["status"] == "CANCELLED"
    after = await run_with_events(a, run["id"])
    assert after["status"] == "CANCELLED"
    assert len([e for e in after["events"] if e["__typename"] == "NodeUpdate"]) < 6


async def test_killed_replica_run_finishes_on_b(cluster: Cluster) -> None:
    a = cluster.start("a")
    run = await start_run(a, input={"delay": 0.5})
    await wait_steps(a, run["id"], 2)
    b = cluster.start("b")
    a.kill()
    done = await finished(b, run["id"])
    assert done["status"] == "SUCCESS", done
    final = await run_with_events(b, run["id"])
    assert final["output"]["steps"] == [f"s{i}" for i in range(6)], "every step exactly once"
    assert_contiguous(final["events"])


async def test_sigterm_drains_to_b(cluster: Cluster) -> None:
    a = cluster.start("a")
    run = await start_run(a, input={"delay": 1.0})
    await wait_steps(a, run["id"], 1)
    b = cluster.start("b")
    took = await asyncio.to_thread(a.terminate)
    assert a.process.returncode == 0 and took < 10
    done = await finished(b, run["id"])
    assert done["status"] == "SUCCESS", done
    final = await run_with_events(b, run["id"])
    assert final["output"]["steps"] == [f"s{i}" for i in range(6)]
    assert_contiguous(final["events"])


async def test_enqueued_runs_spread_over_replicas_run_in_order(cluster: Cluster) -> None:
    replicas = [cluster.start(name) for name in ("a", "b", "c")]
    first = await start_run(replicas[0], input={"delay": 0.05})
    runs = [first]
    for i in range(19):
        runs.append(
            await start_run(
                replicas[(i + 1) % 3],
                threadId=first["threadId"],
                input={"delay": 0.05},
                multitask="ENQUEUE",
            )
        )
    for run in runs:
        assert (await finished(replicas[0], run["id"]))["status"] == "SUCCESS"
    with psycopg.connect(cluster.url) as conn:
        rows = conn.execute(
            "SELECT run_id, started_at, finished_at FROM code_hero_runs"
            " WHERE thread_id = %s ORDER BY created_at",
            (first["threadId"],),
        ).fetchall()
    assert [r[0] for r in rows] == [r["id"] for r in runs]
    for (_, _, finished_at), (_, started_at, _) in pairwise(rows):
        assert finished_at <= started_at, "one at a time, in the order asked"
