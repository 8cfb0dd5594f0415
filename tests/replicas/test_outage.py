"""A database outage under several replicas: each falls back on its own, each syncs back.

Two real `code-hero serve` processes reach PostgreSQL through one proxy that the
test takes down and brings back. During the outage each replica starts runs on
new threads on its own fallback and answers UNAVAILABLE for what only the
database (or the other replica) holds; after it, everything either accepted is
in the database and reads the same from both.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import psycopg
import pytest

from tests.faults import with_port
from tests.graphql.clients import data, gql, until_finished
from tests.replicas.conftest import TLS, Cluster, Replica, ThreadedProxy

pytestmark = pytest.mark.postgres

# Probes five times a second: the outage and its end are seen within a moment.
# Replicas start one after the other: two setting up a fresh database at once
# wait on each other until the open times out (the checkpoint saver's CREATE
# INDEX CONCURRENTLY waits for the other's pending pg_advisory_lock).
ENV = {"CODE_HERO_HEALTH_INTERVAL": "0.2"}
START = """mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status } }"""
HEALTH = "{ health { status pendingSync quarantined degradedSince } }"
RUN = """query($id: ID!) { run(id: $id) { id threadId graph status input output error
  createdAt startedAt finishedAt
  events(first: 1000) { seq __typename at ... on RunStatusChanged { status } } } }"""
THREADS = "{ threads(first: 100) { edges { node { id status } } } }"
CHECKPOINTS = """query($id: ID!) { thread(id: $id) {
  checkpoints(first: 100) { edges { node { id step } } } } }"""
STEPS = [f"s{i}" for i in range(6)]


async def ask(replica: Replica, query: str, variables: dict[str, Any] | None = None) -> Any:
    async with httpx.AsyncClient(base_url=replica.http, timeout=30, verify=TLS) as client:
        return await gql(client, query, variables)


async def start_run(replica: Replica, delay: float) -> dict[str, Any]:
    body = await ask(replica, START, {"input": {"graph": "slow", "input": {"delay": delay}}})
    run: dict[str, Any] = data(body)["startRun"]
    return run


async def wait_health(replica: Replica, status: str, limit: float = 20) -> dict[str, Any]:
    """Poll `health` until it is `status` (HEALTHY also with nothing left to sync)."""
    deadline = time.monotonic() + limit
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = data(await ask(replica, HEALTH))["health"]
        if health["status"] == status and (status != "HEALTHY" or health["pendingSync"] == 0):
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"{replica.name} never became {status}; last {health}")


async def finished(replica: Replica, run_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=replica.http, timeout=30, verify=TLS) as client:
        return await until_finished(client, run_id, seconds=20)


async def wait_steps(replica: Replica, run_id: str, steps: int) -> None:
    async with asyncio.timeout(20):
        while True:
            run = data(await ask(replica, RUN, {"id": run_id}))["run"]
            if sum(1 for e in run["events"] if e["__typename"] == "NodeUpdate") >= steps:
                return
            await asyncio.sleep(0.05)


def rows(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql, params).fetchall())


STATUS = "query($id: ID!) { run(id: $id) { status } }"


async def executor_of(run_id: str, *replicas: Replica) -> tuple[Replica, Replica]:
    """During an outage: (the replica executing the run, the other one).

    Whichever replica claimed it goes on with it and answers for it; the other
    has never seen it outside the database and answers UNAVAILABLE.
    """
    answers = [await ask(r, STATUS, {"id": run_id}) for r in replicas]
    knows = [r for r, body in zip(replicas, answers, strict=True) if "errors" not in body]
    assert len(knows) == 1, answers
    (own,) = knows
    (other_body,) = [b for r, b in zip(replicas, answers, strict=True) if r is not own]
    assert_unavailable(other_body)
    (other,) = [r for r in replicas if r is not own]
    return own, other


def assert_unavailable(body: dict[str, Any]) -> None:
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "UNAVAILABLE", error
    assert error["extensions"]["retryAfter"] >= 1


def lease_of(url: str, run_id: str) -> tuple[str, str | None]:
    """The run's status and lease owner in the database itself."""
    ((status, owner),) = rows(
        url, "SELECT status, lease_owner FROM code_hero_runs WHERE run_id = %s", run_id
    )
    return status, owner


async def test_each_replica_falls_back_alone_and_syncs_back(
    proxied_cluster: Cluster, pg_proxy: ThreadedProxy, pg_database: str
) -> None:
    # One after the other: see `ENV` on starting replicas at once.
    a = proxied_cluster.start("a", **ENV)
    b = proxied_cluster.start("b", **ENV)
    # In flight when the outage begins, on whichever replica claimed it: it goes on there.
    inflight = await start_run(a, delay=0.4)
    await wait_steps(a, inflight["id"], 1)

    pg_proxy.refuse()
    for replica in (a, b):
        health = await wait_health(replica, "DEGRADED")
        assert health["degradedSince"] is not None

    executing, _ = await executor_of(inflight["id"], a, b)
    started = {r.name: await start_run(r, delay=0.05) for r in (a, b)}
    for own, other in ((a, b), (b, a)):
        run = started[own.name]
        done = await finished(own, run["id"])
        assert done["status"] == "SUCCESS", done
        # The other replica has never heard of it and cannot ask the database.
        assert_unavailable(await ask(other, RUN, {"id": run["id"]}))
    done = await finished(executing, inflight["id"])
    assert done["status"] == "SUCCESS", done

    pg_proxy.forward()
    for replica in (a, b):
        health = await wait_health(replica, "HEALTHY")
        assert health["degradedSince"] is None and health["quarantined"] == 0, health

    all_runs = [inflight, started["a"], started["b"]]
    threads = {r["threadId"] for r in all_runs}
    seen: dict[str, list[dict[str, Any]]] = {}
    for replica in (a, b):
        listing = data(await ask(replica, THREADS))["threads"]["edges"]
        assert {e["node"]["id"] for e in listing} == threads, replica.name
        seen[replica.name] = [await synced_run(replica, run) for run in all_runs]
    assert seen["a"] == seen["b"], "both replicas read the same runs and events"

    # The database itself, not through the proxy: every thread, run and event.
    ids = [r["id"] for r in all_runs]
    stored_threads = rows(
        pg_database,
        "SELECT thread_id FROM code_hero_threads WHERE thread_id = ANY(%s)",
        list(threads),
    )
    assert {t for (t,) in stored_threads} == threads
    stored_runs = dict(
        rows(pg_database, "SELECT run_id, status FROM code_hero_runs WHERE run_id = ANY(%s)", ids)
    )
    assert stored_runs == dict.fromkeys(ids, "SUCCESS")
    for got in seen["a"]:
        stored_seqs = [
            s
            for (s,) in rows(
                pg_database,
                "SELECT seq FROM code_hero_run_events WHERE run_id = %s ORDER BY seq",
                got["id"],
            )
        ]
        assert stored_seqs == [e["seq"] for e in got["events"]], got["id"]
    with_checkpoints = rows(
        pg_database,
        "SELECT DISTINCT thread_id FROM checkpoints WHERE thread_id = ANY(%s)",
        list(threads),
    )
    assert {t for (t,) in with_checkpoints} == threads


async def synced_run(replica: Replica, run: dict[str, Any]) -> dict[str, Any]:
    """The run as the replica reads it after recovery, checked whole: it ran once, to the end."""
    got: dict[str, Any] = data(await ask(replica, RUN, {"id": run["id"]}))["run"]
    assert got["status"] == "SUCCESS", (replica.name, got)
    assert got["output"]["steps"] == STEPS, (replica.name, got["output"])
    seqs = [e["seq"] for e in got["events"]]
    assert seqs == list(range(1, len(seqs) + 1)), (replica.name, seqs)
    statuses = [e["status"] for e in got["events"] if e["__typename"] == "RunStatusChanged"]
    assert statuses == ["PENDING", "RUNNING", "SUCCESS"], (replica.name, statuses)
    updates = [e for e in got["events"] if e["__typename"] == "NodeUpdate"]
    assert len(updates) == len(STEPS), (replica.name, got["events"])
    checkpoints = data(await ask(replica, CHECKPOINTS, {"id": run["threadId"]}))
    assert checkpoints["thread"]["checkpoints"]["edges"], (replica.name, run)
    return got


async def test_a_replica_back_first_leaves_the_others_run_alone(
    pg_proxy: ThreadedProxy,
    second_pg_proxy: ThreadedProxy,
    cluster: Cluster,
    pg_database: str,
) -> None:
    """The lease of a run in flight lapses in the database during the outage; the
    replica that comes back first must not take the run over (running it twice)
    before the one executing it comes back and copies it in."""
    env = {**ENV, "CODE_HERO_LEASE_SECONDS": "3"}  # claims polled every second
    a = cluster.start("a", url=with_port(pg_database, pg_proxy.port), **env)
    b = cluster.start("b", url=with_port(pg_database, second_pg_proxy.port), **env)
    proxies = {a.name: pg_proxy, b.name: second_pg_proxy}
    inflight = await start_run(a, delay=0.4)
    await wait_steps(a, inflight["id"], 1)
    _, holder = lease_of(pg_database, inflight["id"])

    for proxy in proxies.values():
        proxy.refuse()
    for replica in (a, b):
        await wait_health(replica, "DEGRADED")
    executing, other = await executor_of(inflight["id"], a, b)
    done = await finished(executing, inflight["id"])
    assert done["status"] == "SUCCESS", done
    assert lease_of(pg_database, inflight["id"]) == ("RUNNING", holder)  # lapsed by now

    proxies[other.name].forward()
    await wait_health(other, "HEALTHY")
    await asyncio.sleep(1.5)  # past a claim poll of `other` (one a second)
    assert lease_of(pg_database, inflight["id"]) == ("RUNNING", holder), "taken over"

    proxies[executing.name].forward()
    await wait_health(executing, "HEALTHY")
    runs = [await synced_run(r, inflight) for r in (a, b)]
    assert runs[0] == runs[1]
    assert lease_of(pg_database, inflight["id"]) == ("SUCCESS", None)
