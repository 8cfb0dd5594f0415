"""A run in flight on PostgreSQL when another session locks the checkpoints table for
longer than MAX_LOCK_RELEASES lock bounds (a VACUUM FULL, another replica's migration).

Before the pgfault branch the run's write waited for the lock and the run went on, its
node executed once. Now each bounded wait releases the run, the resumption executes the
node again, and after MAX_LOCK_RELEASES the run ends ERROR."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.runs.executor import StartRun

SPEC = f"{Path(__file__).with_name('held_table_graph.py')}:graph"


@pytest.mark.postgres
async def test_a_run_outlasts_a_table_lock_held_past_its_releases(
    pg_database: str, tmp_path: Path
) -> None:
    config = create_postgres_checkpointer(pg_database, lock_timeout=0.2)
    settings = GatewaySettings(checkpointer=config, graphs={"g": SPEC})
    async with Gateway(settings) as gw:
        given = {"folder": str(tmp_path), "dsn": pg_database}
        run = await gw.start_run(StartRun(graph="g", input=given))
        # The lock is held while the run is unfinished (for 30 s at most: a guard).
        for _ in range(600):
            record = await gw.manager.registry.get_run(run.run_id)
            assert record is not None
            if record.status.finished:
                break
            await asyncio.sleep(0.05)
        (tmp_path / "release").touch()
        for _ in range(600):
            record = await gw.manager.registry.get_run(run.run_id)
            assert record is not None
            if record.status.finished:
                break
            await asyncio.sleep(0.05)
    assert (tmp_path / "side-effects").read_text() == "x", record.error
    assert record.status.value == "SUCCESS", record.error
