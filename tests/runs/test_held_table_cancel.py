"""A run cancelled while its checkpoint write waits in place for a table another session
holds (a VACUUM FULL, another replica's migration) stops while the lock is still held:
the write waits without limit, so only the run's cancellation (a cancel, a lost lease, a
drain) ends it (review of 5f52e78; LangGraph awaits the write, so the cancel reaches it)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.runs.executor import StartRun

SPEC = f"{Path(__file__).with_name('held_table_graph.py')}:graph"


@pytest.mark.postgres
async def test_a_run_cancelled_at_a_held_table_stops_while_it_is_held(
    pg_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="code_hero.persistence.fallback")
    config = create_postgres_checkpointer(pg_database, lock_timeout=0.2)
    settings = GatewaySettings(checkpointer=config, graphs={"g": SPEC})
    async with Gateway(settings) as gw:
        given = {"folder": str(tmp_path), "dsn": pg_database}
        run = await gw.start_run(StartRun(graph="g", input=given))
        for _ in range(600):  # the run's write waits for the lock (30 s at most: a guard)
            if any("waits for a lock" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        await gw.cancel_run(run.run_id)
        # Stopped while the table is still locked (10 s at most: a guard; the lock is
        # held up to 60 s by the graph unless released).
        for _ in range(200):
            if not gw.executor.is_active(run.run_id):
                break
            await asyncio.sleep(0.05)
        stopped = not gw.executor.is_active(run.run_id)
        (tmp_path / "release").touch()
    assert stopped, "the cancelled run executed on for as long as the table was locked"
