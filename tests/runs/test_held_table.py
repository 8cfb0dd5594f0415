"""A run in flight on PostgreSQL when another session locks the checkpoints table for
longer than many lock bounds (a VACUUM FULL, another replica's migration): the run's
checkpoint write waits for the lock in place, as an unbounded wait did, and the run goes
on, its node executed once. Released at each bound, it would execute the node again at
each resumption and end ERROR after MAX_LOCK_RELEASES (review of pgfault)."""

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
async def test_a_run_outlasts_a_table_lock_held_past_its_releases(
    pg_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="code_hero.persistence.fallback")
    config = create_postgres_checkpointer(pg_database, lock_timeout=0.2)
    settings = GatewaySettings(checkpointer=config, graphs={"g": SPEC})
    async with Gateway(settings) as gw:
        given = {"folder": str(tmp_path), "dsn": pg_database}
        run = await gw.start_run(StartRun(graph="g", input=given))
        # The lock is held until the run's write has waited out the bound 8 times in
        # place, or the run ends (released at each bound instead, it ends ERROR; 60 s at
        # most: a guard).
        for _ in range(1200):
            record = await gw.manager.registry.get_run(run.run_id)
            assert record is not None
            waits = [r for r in caplog.records if "waits for a lock" in r.getMessage()]
            if record.status.finished or len(waits) >= 8:
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
