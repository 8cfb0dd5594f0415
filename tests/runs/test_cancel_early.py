"""A run cancelled between its claim and its first step still ends CANCELLED."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunRecord, RunStatus
from code_hero.runs.executor import StartRun
from tests.runs.conftest import SLOW_SPEC


async def test_a_cancel_before_the_first_step_is_recorded(
    backend_config: CheckpointerConfig,
) -> None:
    # Nothing claims on its own (no slots): the test claims and launches the run, then
    # stops it before its task has run a single step.
    settings = GatewaySettings(
        checkpointer=backend_config, graphs={"slow": SLOW_SPEC}, max_concurrent_runs=0
    )
    async with Gateway(settings) as gw:
        run = await gw.start_run(StartRun(graph="slow", input={"delay": 0.5}))
        executor = gw.executor
        now = datetime.now(UTC)
        (claimed,) = await gw.manager.registry.claim_runs(
            executor.owner, now=now, until=now + timedelta(seconds=30), limit=1
        )
        executor.launch(claimed, resuming=False)
        executor.stop(claimed.run_id)  # the task has not started yet
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            record = await gw.get_run(run.run_id)
            if record is not None and record.status.finished:
                break
            await asyncio.sleep(0.02)
        assert record is not None and record.status is RunStatus.CANCELLED
        assert executor.internal_sizes() == dict.fromkeys(executor.internal_sizes(), 0)


async def test_a_cancel_an_await_dropped_is_not_lost(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On Python 3.11 asyncio.wait_for returns a result that arrived with the cancel and
    # drops the cancel: psycopg_pool's getconn waits with it, so a run waiting for a
    # connection went on as if never stopped (its cancelRun answered RUNNING, or SUCCESS
    # once a short run had ended). The run's RUNNING update (`start_run`) drops it here.
    registry = gateway.manager.registry
    start_run, reached, cancelled = registry.start_run, asyncio.Event(), asyncio.Event()

    async def dropping_the_cancel(run_id: str, started_at: Any) -> tuple[RunRecord | None, int]:
        reached.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
        return await start_run(run_id, started_at)

    monkeypatch.setattr(registry, "start_run", dropping_the_cancel)
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 30}))  # unending
    await reached.wait()
    final = await gateway.cancel_run(run.run_id)
    assert cancelled.is_set()
    assert final.status is RunStatus.CANCELLED


async def test_a_run_cancelled_before_any_claim_leaves_no_fresh_thread_entry(
    backend_config: CheckpointerConfig,
) -> None:
    """A run admitted on a thread made for it is remembered until its first launch (its
    first checkpoint read is skipped then); one cancelled before it was ever claimed
    never launches here and is forgotten at its end, not kept until the bound evicts it."""
    settings = GatewaySettings(
        checkpointer=backend_config, graphs={"slow": SLOW_SPEC}, max_concurrent_runs=0
    )
    async with Gateway(settings) as gw:
        run = await gw.start_run(StartRun(graph="slow", input={"delay": 0}))
        assert list(gw.executor._fresh) == [run.run_id]
        cancelled = await gw.cancel_run(run.run_id)
        assert cancelled.status is RunStatus.CANCELLED
        assert gw.executor._fresh == {}
