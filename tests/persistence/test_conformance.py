"""One behaviour suite for the manager, run on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from langchain_core.messages import HumanMessage

from code_hero.errors import BadInputError
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.records import RunRecord, RunStatus, ThreadStatus
from tests.graphs import build_graph


async def run_graph(manager: EnhancedCheckpointerManager, thread_id: str, **kwargs: object) -> dict:
    graph = build_graph(**kwargs).compile(checkpointer=manager.get_checkpointer())
    config = manager.create_thread_config(thread_id, user_id="alice")
    return await graph.ainvoke({"messages": [HumanMessage("hi")], "blob": b"\x00\x01"}, config)


async def test_graph_checkpoints_read_back(manager: EnhancedCheckpointerManager) -> None:
    result = await run_graph(manager, "t1")
    assert result["steps"] == ["n0", "n1", "n2"]

    latest = await manager.get_checkpoint("t1")
    assert latest is not None
    assert latest.values["steps"] == ["n0", "n1", "n2"]
    assert latest.values["blob"] == {"__type__": "bytes", "base64": "AAE="}
    assert latest.values["messages"][0]["type"] == "human"
    assert latest.values["messages"][-1]["content"] == "n2 done"
    assert latest.next == []
    assert latest.source == "LOOP"
    assert latest.step == 3

    first = await manager.get_checkpoint("t1", checkpoint_id=latest.parent_id)
    assert first is not None and first.next == ["n2"]
    assert await manager.get_checkpoint("t1", checkpoint_id="no-such-id") is None
    assert await manager.get_checkpoint("missing-thread") is None


async def test_history_pages_newest_first_without_gaps(
    manager: EnhancedCheckpointerManager,
) -> None:
    await run_graph(manager, "hist", nodes=6)
    seen, after = [], None
    while True:
        page = await manager.list_checkpoints("hist", first=3, after=after)
        seen += page.items
        if not page.has_next_page:
            break
        after = page.end_cursor
    ids = [c.checkpoint_id for c in seen]
    assert len(ids) == 8  # input + 6 nodes + start
    assert ids == sorted(ids, reverse=True)
    assert [c.step for c in seen] == list(range(6, -2, -1))
    assert all(c.parent_id == nxt.checkpoint_id for c, nxt in pairwise(seen))
    assert seen[-1].source == "INPUT"


async def test_bad_paging_arguments(manager: EnhancedCheckpointerManager) -> None:
    with pytest.raises(BadInputError):
        await manager.list_checkpoints("x", first=101)
    with pytest.raises(BadInputError):
        await manager.list_checkpoints("x", after="not-a-cursor!")
    with pytest.raises(BadInputError):
        await manager.list_threads(colour="red")


async def test_threads_are_registered_listed_and_filtered(
    manager: EnhancedCheckpointerManager,
) -> None:
    for name in ("a", "b", "c"):
        await run_graph(manager, name)
    b = await manager.registry.get_thread("b")
    assert b is not None
    await manager.registry.put_thread(
        replace(b, metadata={"project": {"name": "x"}, "tier": 1}, updated_at=datetime.now(UTC))
    )
    # A thread whose run failed: bob's, in ERROR.
    await manager.registry.admit_run(
        RunRecord(
            run_id="r", thread_id="other", graph="g", status=RunStatus.PENDING, user_id="bob"
        ),
        reject_if_busy=True,
    )
    await manager.registry.finish_run("r", ThreadStatus.ERROR, status=RunStatus.ERROR)

    threads = await manager.list_threads(user_id="alice", limit=10)
    assert [t["thread_id"] for t in threads] == ["b", "c", "a"]
    assert all(t["user_id"] == "alice" for t in threads)
    assert [
        t["thread_id"] for t in await manager.list_threads(metadata={"project": {"name": "x"}})
    ] == ["b"]
    assert [t["thread_id"] for t in await manager.list_threads(status="ERROR")] == ["other"]
    cut = threads[1]["updated_at"]
    assert [t["thread_id"] for t in await manager.list_threads(updated_after=cut)] == ["other", "b"]

    page1 = await manager.threads_page(first=2)
    page2 = await manager.threads_page(first=2, after=page1.end_cursor)
    ids = [t.thread_id for t in [*page1.items, *page2.items]]
    assert ids == ["other", "b", "c", "a"] and not page2.has_next_page


async def test_delete_thread_removes_every_namespace(manager: EnhancedCheckpointerManager) -> None:
    await run_graph(manager, "doomed", with_subgraph=True)
    await run_graph(manager, "kept")
    history = await manager.list_checkpoints("doomed", first=100)
    sub = await manager.router.read_list({"configurable": {"thread_id": "doomed"}})
    assert any(t.config["configurable"]["checkpoint_ns"] for t in sub), "subgraph namespaces exist"

    gone = await manager.purge_thread("doomed")
    assert gone.deleted and gone.checkpoints_deleted == len(sub) > len(history.items)
    assert await manager.get_checkpoint("doomed") is None
    assert await manager.router.read_list({"configurable": {"thread_id": "doomed"}}) == []
    assert await manager.get_thread("doomed") is None
    assert await manager.get_checkpoint("kept") is not None
    assert await manager.delete_thread("doomed") is False


async def test_retention_keep_latest_and_older_than(manager: EnhancedCheckpointerManager) -> None:
    await run_graph(manager, "long", nodes=5, with_subgraph=True)
    await run_graph(manager, "old")
    before = await manager.get_checkpoint("long")
    report = await manager.prune(keep_latest=2)
    assert report.checkpoints_deleted > 0
    remaining = await manager.router.read_list({"configurable": {"thread_id": "long"}})
    by_ns: dict[str, int] = {}
    for t in remaining:
        ns = t.config["configurable"]["checkpoint_ns"]
        by_ns[ns] = by_ns.get(ns, 0) + 1
    assert by_ns and all(n <= 2 for n in by_ns.values())
    after = await manager.get_checkpoint("long")
    assert after is not None and before is not None
    assert after.values == before.values  # blobs the kept checkpoints need survive

    report = await manager.prune(older_than=datetime.now(UTC) + timedelta(seconds=1))
    assert report.threads_deleted == 2
    assert await manager.list_threads() == []
    with pytest.raises(BadInputError):
        await manager.prune()


async def test_orphan_checkpoints_go_only_when_the_thread_has_no_row(
    manager: EnhancedCheckpointerManager,
) -> None:
    # Every store has the step (memory included, in one lock's hold): a run that outlived
    # its thread's deletion purges what it wrote after with it, no fallback in two steps.
    backend = manager.router.primary.backend
    assert backend is not None
    for name in ("kept", "orphan", "deleting"):
        await run_graph(manager, name, with_subgraph=True)
    written = await backend.count_checkpoints("orphan")
    assert written > 0
    await manager.registry.delete_thread("orphan")
    assert await manager.registry.start_deletion("deleting")  # its row marked: no row

    assert await backend.delete_orphan_checkpoints("kept") is None
    assert await backend.delete_orphan_checkpoints("orphan") == written
    assert await backend.delete_orphan_checkpoints("deleting") > 0

    assert await manager.get_checkpoint("kept") is not None
    for name in ("orphan", "deleting"):
        assert await backend.count_checkpoints(name) == 0
        assert await manager.get_checkpoint(name) is None


async def test_concurrent_runs_do_not_fail(manager: EnhancedCheckpointerManager) -> None:
    results = await asyncio.gather(*(run_graph(manager, f"c{i}", nodes=4) for i in range(16)))
    assert all(r["steps"] == ["n0", "n1", "n2", "n3"] for r in results)
    assert len(await manager.list_threads(limit=50)) == 16


async def test_health_reports_primary(manager: EnhancedCheckpointerManager) -> None:
    health = await manager.health_check()
    assert health["overall_status"] == "healthy"
    primary = health["primary_checkpointer"]
    assert primary["healthy"] and primary["active"] and primary["kind"] == manager.config.kind
    assert primary["latency_ms"] is not None and primary["last_error"] is None
    assert health["fallback_checkpointer"]["healthy"]
    assert manager.health_status["primary_healthy"] is True
    snap = manager.metrics_snapshot()
    assert any(k.startswith("primary:") for k in snap["operations"])


async def test_sync_graph_api_from_a_worker_thread(manager: EnhancedCheckpointerManager) -> None:
    graph = build_graph().compile(checkpointer=manager.get_checkpointer())
    config = manager.create_thread_config("sync-thread")
    result = await asyncio.to_thread(graph.invoke, {"messages": [HumanMessage("hi")]}, config)
    assert result["steps"] == ["n0", "n1", "n2"]
    state = await asyncio.to_thread(graph.get_state, config)
    assert state.values["steps"] == ["n0", "n1", "n2"]


@pytest.mark.postgres
async def test_postgres_delete_leaves_no_rows(pg_database: str) -> None:
    import psycopg

    from code_hero.config import create_postgres_checkpointer
    from code_hero.persistence.records import EventRecord

    async with EnhancedCheckpointerManager(create_postgres_checkpointer(pg_database)) as manager:
        await run_graph(manager, "doomed", with_subgraph=True)
        await run_graph(manager, "kept")
        now = datetime.now(UTC)
        await manager.registry.admit_run(
            RunRecord(run_id="r", thread_id="doomed", graph="g", status=RunStatus.SUCCESS),
            reject_if_busy=False,
            events=[EventRecord("r", "doomed", 1, "status", {}, now)],
        )
        gone = await manager.purge_thread("doomed")
        assert gone.runs_deleted == 1 and gone.checkpoints_deleted > 0
    tables = {
        "checkpoints": "thread_id",
        "checkpoint_blobs": "thread_id",
        "checkpoint_writes": "thread_id",
        "code_hero_threads": "thread_id",
        "code_hero_runs": "thread_id",
        "code_hero_run_events": "thread_id",
    }
    with psycopg.connect(pg_database) as conn:
        for table, column in tables.items():
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = 'doomed'").fetchone()
            assert row == (0,), table
        row = conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = 'kept'").fetchone()
        assert row is not None and row[0] > 0


async def test_checkpoint_keys_name_every_checkpoint_of_the_thread(
    manager: EnhancedCheckpointerManager,
) -> None:
    # What a kept thread's deletion counts with (the fallback's keys against the
    # primary's): each checkpoint once, subgraph namespaces included, no other thread's.
    backend = manager.router.primary.backend
    assert backend is not None
    for name in ("mine", "other"):
        await run_graph(manager, name, with_subgraph=True)
    keys = await backend.checkpoint_keys("mine")
    assert len(keys) == await backend.count_checkpoints("mine") > 0
    assert len({ns for ns, _ in keys}) > 1  # the root's and the subgraph's
    assert keys.isdisjoint(await backend.checkpoint_keys("other"))
    assert await backend.checkpoint_keys("nobody") == set()
