"""A cancel that meets a claim pass, on every backend: it takes effect at once.

Before, a cancel waited for the claim lock, held across a whole claim pass (its
database round trips included). A pass slower than the run's remaining steps (a
loaded machine, a slow database) let the run end SUCCESS before the cancel looked:
test_cancel_run[postgres] saw that once. Now a cancel takes no lock, and a pass
stops a run it claimed whose cancel was asked meanwhile. The same holds for a
thread's runs stopped before its deletion (`stop_thread`): they waited for the
claim lock as a cancel did, and the deletion waited the run out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from code_hero.gateway import Gateway
from code_hero.persistence.records import RunRecord, RunStatus
from code_hero.runs.executor import StartRun
from tests.faults import until

SLOW = {"delay": 0.2}  # six steps: ended long before a cancel that waited for it


async def cancel_it(gateway: Gateway, run: RunRecord) -> RunRecord:
    return await gateway.cancel_run(run.run_id)


async def stop_its_thread(gateway: Gateway, run: RunRecord) -> RunRecord:
    await gateway.executor.stop_thread(run.thread_id)
    return await gateway.executor.wait(run.run_id)


Stop = Callable[[Gateway, RunRecord], Awaitable[RunRecord]]
stops = pytest.mark.parametrize("stop", [cancel_it, stop_its_thread], ids=["cancel", "stop"])


@stops
async def test_a_stop_does_not_wait_for_a_claim_pass(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, stop: Stop
) -> None:
    executor, registry = gateway.executor, gateway.manager.registry
    run = await gateway.start_run(StartRun(graph="slow", input=SLOW))

    async def executing() -> bool:
        return executor.is_active(run.run_id)

    await until(executing)
    claim, entered = registry.claim_runs, asyncio.Event()

    async def slower_than_the_run(*args: Any, **kwargs: Any) -> list[RunRecord]:
        entered.set()
        await executor.wait(run.run_id)  # the pass holds on until the run has ended
        return await claim(*args, **kwargs)

    monkeypatch.setattr(registry, "claim_runs", slower_than_the_run)
    claiming = asyncio.create_task(executor.recover())
    await entered.wait()
    stopped = await stop(gateway, run)
    await claiming
    assert stopped.status is RunStatus.CANCELLED


@stops
async def test_a_run_claimed_as_it_is_stopped_never_starts(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, stop: Stop
) -> None:
    executor, registry = gateway.executor, gateway.manager.registry
    claim, claimed, flagged = registry.claim_runs, asyncio.Event(), asyncio.Event()
    request_cancel = registry.request_cancel

    async def flag(run_id: str) -> RunRecord | None:
        record = await request_cancel(run_id)
        flagged.set()
        return record

    async def then_stopped(*args: Any, **kwargs: Any) -> list[RunRecord]:
        runs = await claim(*args, **kwargs)  # leased here before the flag was set
        if runs:
            claimed.set()
            await flagged.wait()
        return runs

    monkeypatch.setattr(registry, "claim_runs", then_stopped)
    monkeypatch.setattr(registry, "request_cancel", flag)
    # No slot free as it starts: admitted for a claim pass, not launched at once.
    claims = executor.claims
    slots, claims.max_concurrent = claims.max_concurrent, 0
    run = await gateway.start_run(StartRun(graph="slow", input=SLOW))
    claims.max_concurrent = slots
    claims.wake()
    await claimed.wait()
    stopped = await stop(gateway, run)
    assert stopped.status is RunStatus.CANCELLED
    assert stopped.started_at is None  # stopped before its first step
    assert executor.internal_sizes() == dict.fromkeys(executor.internal_sizes(), 0)
