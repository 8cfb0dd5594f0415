"""Retention over GraphQL on SQLite and PostgreSQL: deleteThreads, pruneThreads, ttl.

Expiry is reached by storing a thread's last update in the past through the
registry (the database derives `expires_at` from it), never by sleeping.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from code_hero.auth import AccessSettings
from code_hero.gateway import Gateway
from code_hero.persistence.records import ThreadRecord, ThreadStatus
from tests.auth.issuer import Issuer
from tests.graphql.clients import codes, data, eventually, gql
from tests.graphql.conftest import Server, Starter, checkpointer_for
from tests.graphql.test_auth import ALICE_KEY, BOB_KEY, FAST, ROOT_KEY, START, client, secured

CREATE = "mutation($input: CreateThreadInput!) { createThread(input: $input) { id expiresAt } }"
DELETE = """mutation($filter: ThreadFilter!, $limit: Int) {
  deleteThreads(filter: $filter, limit: $limit) { deleted threadIds hasMore } }"""
PRUNE = """mutation($input: PruneThreadsInput!) {
  pruneThreads(input: $input) { threadsDeleted checkpointsDeleted } }"""
THREADS = """query($filter: ThreadFilter) {
  threads(first: 100, filter: $filter) { totalCount edges { node { id expiresAt } } } }"""
THREAD = """query($id: ID!) { thread(id: $id) { id values
  checkpoints(first: 100) { totalCount edges { node { id } } } } }"""


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


async def create(http: Any, **fields: Any) -> str:
    thread_id: str = data(await gql(http, CREATE, {"input": fields}))["createThread"]["id"]
    return thread_id


async def listed(http: Any, flt: dict[str, Any] | None = None) -> tuple[set[str], int]:
    threads = data(await gql(http, THREADS, {"filter": flt}))["threads"]
    return {e["node"]["id"] for e in threads["edges"]}, threads["totalCount"]


async def backdate(gateway: Gateway, thread_id: str, *, ago: timedelta) -> ThreadRecord:
    """Store the thread as last updated `ago` (its ttl unchanged): as if time had passed."""
    registry = gateway.manager.registry
    record = await registry.get_thread(thread_id)
    assert record is not None
    then = datetime.now(UTC) - ago
    await registry.put_thread(replace(record, created_at=then, updated_at=then))
    return record


async def test_delete_threads_in_batches_cancelling_their_runs(server: Server) -> None:
    batch = [await create(server.http, metadata={"batch": "x"}) for _ in range(5)]
    other = await create(server.http, metadata={"batch": "y"})
    slow = {"graph": "slow", "message": "hi", "config": {"delay": 5.0}, "threadId": batch[0]}
    run = data(await gql(server.http, START, {"input": slow}))["startRun"]
    executor = server.gateway.executor
    await eventually(lambda: executor.active_runs == 1)

    flt = {"metadata": {"batch": "x"}}
    first = data(await gql(server.http, DELETE, {"filter": flt, "limit": 3}))["deleteThreads"]
    assert first["deleted"] == 3 and first["hasMore"] is True
    rest = data(await gql(server.http, DELETE, {"filter": flt, "limit": 3}))["deleteThreads"]
    assert rest["deleted"] == 2 and rest["hasMore"] is False
    assert set(first["threadIds"]) | set(rest["threadIds"]) == set(batch)

    # The running run was stopped before its thread went, and is gone with it.
    assert executor.active_runs == 0
    body = await gql(server.http, "query($id: ID!) { run(id: $id) { id } }", {"id": run["id"]})
    assert data(body)["run"] is None
    assert (
        await server.gateway.manager.router.read_list({"configurable": {"thread_id": batch[0]}})
        == []
    )
    assert (await listed(server.http))[0] == {other}

    for limit in (0, 1001):
        bad = await gql(server.http, DELETE, {"filter": {}, "limit": limit})
        assert codes(bad) == ["BAD_USER_INPUT"] and "limit" in bad["errors"][0]["message"]


async def test_prune_older_than_and_keep_latest(server: Server) -> None:
    old = [await create(server.http) for _ in range(3)]
    for thread_id in old:
        await backdate(server.gateway, thread_id, ago=timedelta(days=30))
    ran = data(await gql(server.http, START, {"input": FAST}))["startRun"]
    fresh = ran["threadId"]

    cut = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    report = data(await gql(server.http, PRUNE, {"input": {"olderThan": cut}}))["pruneThreads"]
    assert report["threadsDeleted"] == 3
    assert (await listed(server.http))[0] == {fresh}

    before = data(await gql(server.http, THREAD, {"id": fresh}))["thread"]
    assert before["checkpoints"]["totalCount"] > 2
    kept = data(await gql(server.http, PRUNE, {"input": {"keepLatest": 2}}))["pruneThreads"]
    assert kept == {
        "threadsDeleted": 0,
        "checkpointsDeleted": before["checkpoints"]["totalCount"] - 2,
    }
    after = data(await gql(server.http, THREAD, {"id": fresh}))["thread"]
    assert after["values"] == before["values"]  # the blobs the kept checkpoints need survive
    assert [e["node"]["id"] for e in after["checkpoints"]["edges"]] == [
        e["node"]["id"] for e in before["checkpoints"]["edges"][:2]
    ]

    # A run continues from the pruned thread's state.
    again = data(await gql(server.http, START, {"input": {**FAST, "threadId": fresh}}))
    assert again["startRun"]["status"] == "SUCCESS"
    final = data(await gql(server.http, THREAD, {"id": fresh}))["thread"]["values"]["steps"]
    assert final[: len(before["values"]["steps"])] == before["values"]["steps"]

    none = await gql(server.http, PRUNE, {"input": {}})
    assert codes(none) == ["BAD_USER_INPUT"]
    zero = await gql(server.http, PRUNE, {"input": {"keepLatest": 0}})
    assert codes(zero) == ["BAD_USER_INPUT"] and "keepLatest" in zero["errors"][0]["message"]


async def test_an_expired_thread_is_hidden_before_the_sweep_deletes_it(server: Server) -> None:
    ran = data(await gql(server.http, START, {"input": FAST}))["startRun"]
    doomed = ran["threadId"]
    updated = data(
        await gql(
            server.http,
            "mutation($id: ID!) { updateThread(input: {id: $id, ttlSeconds: 60}) { expiresAt } }",
            {"id": doomed},
        )
    )
    assert updated["updateThread"]["expiresAt"] is not None
    kept = await create(server.http, ttlSeconds=3600)
    await backdate(server.gateway, kept, ago=timedelta(seconds=30))  # not yet expired
    await backdate(server.gateway, doomed, ago=timedelta(minutes=2))

    # Gone from every read at once, though still stored.
    assert data(await gql(server.http, THREAD, {"id": doomed}))["thread"] is None
    assert await listed(server.http) == ({kept}, 1)
    checkpoint = "query($t: ID!) { checkpoint(threadId: $t) { id } }"
    assert data(await gql(server.http, checkpoint, {"t": doomed}))["checkpoint"] is None
    runs = data(await gql(server.http, "{ runs(first: 100) { totalCount edges { node { id } } } }"))
    assert runs["runs"]["totalCount"] == 0
    stats = data(await gql(server.http, "{ runStats { runs } }"))["runStats"]
    assert stats["runs"] == 0  # statistics count what the listing shows
    run = "query($id: ID!) { run(id: $id) { id } }"
    assert data(await gql(server.http, run, {"id": ran["id"]}))["run"] is None
    manager = server.gateway.manager
    assert await manager.router.read_list({"configurable": {"thread_id": doomed}}) != []

    # The sweep deletes it, checkpoints and all; the other stays.
    assert await server.gateway.sweep_expired() == [doomed]
    assert await manager.router.read_list({"configurable": {"thread_id": doomed}}) == []
    assert await manager.registry.expired_thread_ids(datetime.now(UTC), limit=10) == []
    assert await server.gateway.sweep_expired() == []
    assert (await listed(server.http))[0] == {kept}


async def test_a_run_on_an_expired_thread_starts_afresh(server: Server) -> None:
    first = data(await gql(server.http, START, {"input": FAST}))["startRun"]
    thread_id = first["threadId"]
    await gql(
        server.http,
        "mutation($id: ID!) { updateThread(input: {id: $id, ttlSeconds: 60}) { id } }",
        {"id": thread_id},
    )
    await backdate(server.gateway, thread_id, ago=timedelta(minutes=2))
    again = data(await gql(server.http, START, {"input": {**FAST, "threadId": thread_id}}))
    assert again["startRun"]["status"] == "SUCCESS"
    thread = data(await gql(server.http, THREAD, {"id": thread_id}))["thread"]
    assert thread["values"]["steps"] == ["first", "second", "third"]  # this run's only
    body = await gql(
        server.http,
        "query($id: ID!) { thread(id: $id) { runs { totalCount } } }",
        {"id": thread_id},
    )
    assert data(body)["thread"]["runs"]["totalCount"] == 1


async def test_the_server_default_ttl_and_the_sweep_loop(start: Starter) -> None:
    fields = {"thread_ttl": 3600, "sweep_interval": 0.05}
    async with start(gateway_fields=fields) as server:
        made = data(await gql(server.http, CREATE, {"input": {}}))["createThread"]
        assert made["expiresAt"] is not None
        ran = data(await gql(server.http, START, {"input": FAST}))["startRun"]
        ids, _ = await listed(server.http)
        assert ids == {made["id"], ran["threadId"]}
        threads = data(await gql(server.http, THREADS))["threads"]["edges"]
        assert all(e["node"]["expiresAt"] for e in threads)

        await backdate(server.gateway, made["id"], ago=timedelta(hours=2))
        registry = server.gateway.manager.registry

        async def swept() -> bool:
            return not await registry.expired_thread_ids(datetime.now(UTC), limit=1)

        async with asyncio.timeout(15):  # the sweep runs every 0.05 s
            while True:
                if await swept():
                    break
                await asyncio.sleep(0.02)
        assert (await listed(server.http))[0] == {ran["threadId"]}


async def test_users_delete_and_prune_only_their_own(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, idp: Issuer
) -> None:
    checkpointer = checkpointer_for(backend, request, tmp_path)
    async with (
        secured(checkpointer, idp, access=AccessSettings()) as server,
        client(server, ALICE_KEY) as alice,
        client(server, BOB_KEY) as bob,
        client(server, ROOT_KEY) as root,
    ):
        alices = {await create(alice) for _ in range(2)}
        bobs = {await create(bob) for _ in range(2)}
        for thread_id in alices | bobs:
            await backdate(server.gateway, thread_id, ago=timedelta(days=30))

        forged = await gql(bob, DELETE, {"filter": {"userId": "alice"}})
        assert codes(forged) == ["FORBIDDEN"]
        gone = data(await gql(bob, DELETE, {"filter": {}, "limit": 1}))["deleteThreads"]
        assert gone["deleted"] == 1 and set(gone["threadIds"]) <= bobs and gone["hasMore"]
        cut = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        pruned = data(await gql(bob, PRUNE, {"input": {"olderThan": cut}}))["pruneThreads"]
        assert pruned["threadsDeleted"] == 1
        assert (await listed(alice))[0] == alices
        assert (await listed(root))[0] == alices

        everyone = data(await gql(root, DELETE, {"filter": {"userId": "alice"}}))
        assert everyone["deleteThreads"]["deleted"] == 2
        assert (await listed(root))[0] == set()


async def test_retention_status_of_a_thread_record_survives_put_thread(server: Server) -> None:
    """put_thread (copies, migrations) keeps a thread's ttl and so its expiry."""
    thread_id = await create(server.http, ttlSeconds=120)
    record = await server.gateway.manager.registry.get_thread(thread_id)
    assert record is not None and record.ttl_seconds == 120 and record.expires_at is not None
    assert record.expires_at - record.updated_at == timedelta(seconds=120)
    assert record.status is ThreadStatus.IDLE
