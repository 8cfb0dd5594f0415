"""A run in flight on PostgreSQL when another session locks the checkpoints table for
longer than many lock bounds (a VACUUM FULL, another replica's migration): the run's
checkpoint write waits for the lock in place, as an unbounded wait did, and the run goes
on, its node executed once. Released at each bound, it would execute the node again at
each resumption and end ERROR after MAX_LOCK_RELEASES (review of pgfault). The wait has
no limit, so only the run's cancellation (a cancel, a lost lease, a drain) ends it while
the lock is held (review of 5f52e78; LangGraph awaits the write, so the cancel reaches it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunRecord
from code_hero.runs.executor import StartRun

SPEC = f"{Path(__file__).with_name('held_table_graph.py')}:graph"


@asynccontextmanager
async def _held_run(
    pg_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[tuple[Gateway, RunRecord]]:
    """A gateway with a 0.2 s lock bound, and a run of the graph that locks the table."""
    caplog.set_level(logging.DEBUG, logger="code_hero.persistence.fallback")
    config = create_postgres_checkpointer(pg_database, lock_timeout=0.2)
    settings = GatewaySettings(checkpointer=config, graphs={"g": SPEC})
    try:
        async with Gateway(settings) as gw:
            given = {"folder": str(tmp_path), "dsn": pg_database}
            yield gw, await gw.start_run(StartRun(graph="g", input=given))
    finally:
        # The graph's thread holding the lock commits up to 50 ms after its release:
        # the test's database dropped before that ended its connection (AdminShutdown).
        (tmp_path / "release").touch()
        for _ in range(1200):
            if (tmp_path / "unlocked").exists() or not (tmp_path / "locked").exists():
                break
            await asyncio.sleep(0.01)


@pytest.mark.postgres
async def test_a_run_outlasts_a_table_lock_held_past_its_releases(
    pg_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _held_run(pg_database, tmp_path, caplog) as (gw, run):
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


@pytest.mark.postgres
async def test_a_run_cancelled_at_a_held_table_stops_while_it_is_held(
    pg_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _held_run(pg_database, tmp_path, caplog) as (gw, run):
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
