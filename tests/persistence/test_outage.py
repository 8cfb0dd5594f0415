"""A real PostgreSQL outage in the middle of a run: nothing written is lost."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from code_hero.checkpointing import EnhancedCheckpointerManager, create_postgres_checkpointer
from code_hero.errors import BackendUnavailableError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunRecord, RunStatus
from code_hero.runs.executor import StartRun
from tests.conftest import ensure_pg_running, pg_reachable
from tests.graphs import build_graph

pytestmark = [pytest.mark.postgres, pytest.mark.outage]


def pg_ctl(action: str) -> None:
    """Stop (fast) or start the local cluster; starting a running one is fine."""
    version = sorted(os.listdir("/etc/postgresql"))[0]
    extra = ["-m", "fast"] if action == "stop" else []
    done = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, *extra],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode not in (0, 2):  # 2: already in the asked state
        raise RuntimeError(f"pg_ctlcluster {action} failed: {done.stderr.strip()}")


async def wait_for(predicate, limit: float = 30.0, interval: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")


def count_rows(url: str, thread_id: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM checkpoints WHERE thread_id = %s", (thread_id,)
        ).fetchone()
        assert row is not None
        return int(row[0])


async def test_run_survives_postgres_outage_and_syncs_back(pg_database: str) -> None:
    config = create_postgres_checkpointer(pg_database, pool_timeout=1, health_check_interval=0.2)
    manager = EnhancedCheckpointerManager(config)
    assert await manager.initialize()
    graph = build_graph(nodes=8).compile(checkpointer=manager.get_checkpointer())
    thread = manager.create_thread_config("outage", user_id="ops")
    try:
        run = asyncio.create_task(
            graph.ainvoke(
                {"messages": [HumanMessage("go")], "delay": 0.4}, thread, durability="sync"
            )
        )
        await wait_for(lambda: asyncio.to_thread(lambda: count_rows(pg_database, "outage") >= 3))
        await asyncio.to_thread(pg_ctl, "stop")
        try:
            result = await asyncio.wait_for(run, timeout=60)
            assert result["steps"] == [f"n{i}" for i in range(8)]
            health = await manager.health_check()
            assert health["overall_status"] == "degraded"
            assert health["pending_sync"] > 0
            latest = await manager.get_checkpoint("outage")  # the newest is on the fallback
            assert latest is not None and latest.values["steps"] == result["steps"]
            with pytest.raises(BackendUnavailableError):  # older history is in PostgreSQL only
                await manager.list_checkpoints("outage", first=100)
        finally:
            await asyncio.to_thread(pg_ctl, "start")
        await wait_for(lambda: _synced(manager), limit=60)
        assert manager.metrics.recoveries == 1 and manager.metrics.synced_items > 0

        # PostgreSQL itself now holds every checkpoint, readable by a stock saver.
        history = await manager.list_checkpoints("outage", first=100)
        assert len(history.items) == 10
        assert count_rows(pg_database, "outage") == 10
        async with AsyncPostgresSaver.from_conn_string(pg_database) as stock:
            latest = await stock.aget_tuple(
                {"configurable": {"thread_id": "outage", "checkpoint_ns": ""}}
            )
        assert latest is not None
        assert latest.checkpoint["channel_values"]["steps"] == result["steps"]
        assert (await manager.get_thread("outage")) is not None
    finally:
        await manager.cleanup()
        ensure_pg_running()
        assert pg_reachable()


async def _synced(manager: EnhancedCheckpointerManager) -> bool:
    health = await manager.health_check()
    return health["overall_status"] == "healthy" and health["pending_sync"] == 0


SLOW_SPEC = f"{Path(__file__).parents[1] / 'runs' / 'slow_graph.py'}:graph"
SLOW_STEPS = [f"s{i}" for i in range(6)]


async def test_sync_back_loses_nothing_under_load(pg_database: str) -> None:
    """16 runs write across a real stop and start; threads are deleted while the sync
    runs; a poison entry is quarantined. Afterwards PostgreSQL has every checkpoint
    of every surviving thread, no deleted thread, and nothing waits."""
    config = create_postgres_checkpointer(pg_database, pool_timeout=1, health_check_interval=0.2)
    settings = GatewaySettings(
        checkpointer=config, graphs={"slow": SLOW_SPEC}, max_concurrent_runs=24
    )
    try:
        async with Gateway(settings) as gw:
            manager = gw.manager
            writers = [
                await gw.start_run(StartRun(graph="slow", input={"delay": 0.7})) for _ in range(16)
            ]
            await wait_for(lambda: _all_running(gw, writers))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(pg_ctl, "stop")
            try:
                await wait_for(lambda: _status(manager, "degraded"))
                born = [
                    await gw.start_run(StartRun(graph="slow", input={}, wait=True))
                    for _ in range(6)
                ]
                assert all(r.status is RunStatus.SUCCESS for r in born)
                # Memory takes a NUL in a thread id; PostgreSQL's text columns never will.
                poison = {"configurable": {"thread_id": "poison\x00", "checkpoint_ns": ""}}
                await manager.get_checkpointer().aput(poison, empty_checkpoint(), {}, {})
            finally:
                await asyncio.to_thread(pg_ctl, "start")
            doomed, survivors = born[:3], born[3:]
            await wait_for(lambda: _syncing(manager), limit=60, interval=0.005)
            deletions = await asyncio.gather(*(gw.delete_thread(r.thread_id) for r in doomed))
            assert all(d.deleted for d in deletions)
            await wait_for(lambda: _synced(manager), limit=60)
            for run in writers:
                await gw.executor.wait(run.run_id, limit=30)
            # The poison checkpoint and its thread's registry touch: both refused, both kept.
            assert manager.router.quarantined == 2
            assert manager.metrics.recoveries == 1
            threads = {r.thread_id: r for r in [*writers, *survivors]}
            expected = {
                t: [c.checkpoint_id for c in (await manager.list_checkpoints(t, first=100)).items]
                for t in threads
            }
            health = await gw.health()
            assert (health["pending_sync"], health["quarantined"]) == (0, 2)
            assert health["overall_status"] == "healthy"
            assert gw.metrics()["quarantined"] == 2  # /metrics: code_hero_quarantined
    finally:
        ensure_pg_running()
    assert pg_reachable()

    async with AsyncPostgresSaver.from_conn_string(pg_database) as stock:
        for thread_id, ids in expected.items():
            found = [
                t.checkpoint["id"]
                async for t in stock.alist({"configurable": {"thread_id": thread_id}})
            ]
            assert found == ids, thread_id
            latest = await stock.aget_tuple(
                {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
            )
            assert latest is not None
            assert latest.checkpoint["channel_values"]["steps"] == SLOW_STEPS
    with psycopg.connect(pg_database) as conn:
        for run in [*writers, *survivors]:
            row = conn.execute(
                "SELECT status FROM code_hero_runs WHERE run_id = %s", (run.run_id,)
            ).fetchone()
            assert row == ("SUCCESS",), run.run_id
            seqs = [
                r[0]
                for r in conn.execute(
                    "SELECT seq FROM code_hero_run_events WHERE run_id = %s ORDER BY seq",
                    (run.run_id,),
                )
            ]
            assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 3
        for run in doomed:
            for table in ("checkpoints", "code_hero_threads", "code_hero_run_events"):
                row = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE thread_id = %s", (run.thread_id,)
                ).fetchone()
                assert row == (0,), (table, run.thread_id)


async def _all_running(gw: Gateway, runs: list[RunRecord]) -> bool:
    found = await gw.get_runs([r.run_id for r in runs])
    return all(r.status is RunStatus.RUNNING for r in found.values()) and len(found) == len(runs)


async def _status(manager: EnhancedCheckpointerManager, status: str) -> bool:
    return manager.overall_status == status


async def _syncing(manager: EnhancedCheckpointerManager) -> bool:
    return manager.metrics.synced_items > 0 or manager.overall_status == "healthy"
