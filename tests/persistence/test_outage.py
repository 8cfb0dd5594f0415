"""A real PostgreSQL outage in the middle of a run: nothing written is lost."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import psycopg
import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from code_hero.checkpointing import EnhancedCheckpointerManager, create_postgres_checkpointer
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
            during = await manager.list_checkpoints("outage", first=100)
            assert during.items[0].values["steps"] == result["steps"]  # reads see the fallback
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
