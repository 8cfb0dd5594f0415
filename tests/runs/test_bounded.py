"""Per-run state is dropped when a run ends, however it ended and wherever it ran.

The maps are read as `/metrics` exports them (`Gateway.internal_sizes()` is
what `code_hero_internal_entries{map=...}` reports).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from code_hero.config import CheckpointerConfig, create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import EventRecord, RunRecord, RunStatus
from code_hero.runs.executor import MultitaskStrategy, StartRun
from tests.graphql.clients import eventually
from tests.runs.conftest import SLOW_SPEC

EXPECTED_MAPS = {
    "executor.started",
    "executor.tasks",
    "executor.done",
    "executor.final",
    "executor.waiters",
    "executor.news",
    "executor.cancel_requested",
    "executor.lost",
    "executor.leases",
    "eventlog.writers",
    "eventlog.waiting",
    "bus.runs",
    "bus.threads",
    "router.touched_at",
    "registry.executing",
    "registry.adopted",
    "registry.ended",
    "registry.held",
    "registry.unended",
}


def idle(*gateways: Gateway) -> bool:
    return all(not any(gw.internal_sizes().values()) for gw in gateways)


async def until_idle(*gateways: Gateway) -> None:
    try:
        await eventually(lambda: idle(*gateways), seconds=30)
    except TimeoutError:
        raise AssertionError([gw.internal_sizes() for gw in gateways]) from None


async def status_of(gw: Gateway, run_id: str, wanted: RunStatus) -> None:
    async with asyncio.timeout(30):
        while True:
            run = await gw.get_run(run_id)
            if run is not None and run.status is wanted:
                return
            await asyncio.sleep(0.02)


class Follower:
    """A subscriber that reads a stream to its end (or leaves after `leave_after` events)."""

    def __init__(self, stream: AsyncIterator[EventRecord], leave_after: int | None = None) -> None:
        self.events: list[EventRecord] = []
        self.task = asyncio.create_task(self._follow(stream, leave_after))

    async def _follow(self, stream: AsyncIterator[EventRecord], leave_after: int | None) -> None:
        async for event in stream:
            self.events.append(event)
            if leave_after is not None and len(self.events) >= leave_after:
                return  # the task ends; the generator is closed when collected or cancelled

    async def leave(self) -> None:
        """Hang up (cancelling the read closes the subscription, as a socket's end does)."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def result(self) -> list[EventRecord]:
        async with asyncio.timeout(60):
            await self.task
        return self.events


async def runs_ending_every_way(
    starter: Gateway, other: Gateway, watcher: Gateway
) -> list[list[EventRecord]]:
    """Success, error, interrupt and resume, cancel while running, cancel before a claim;
    `watcher` follows each run (one subscriber leaves early, one follows a thread)."""
    followers: list[Follower] = []

    async def start(**fields: Any) -> RunRecord:
        run = await starter.start_run(StartRun(graph="slow", **fields))
        followers.append(Follower(await watcher.follow_run(run.run_id)))
        return run

    ok = await start(input={})
    failed = await start(input={"fail_at": "s2"})
    asked = await start(input={"ask_at": "s1"})
    leaver = await starter.start_run(StartRun(graph="slow", input={"delay": 0.05}))
    early = Follower(await watcher.follow_run(leaver.run_id))
    # A slow run holds its thread; the run queued behind it is cancelled unclaimed.
    slow = await start(input={"delay": 0.3})
    queued = await start(thread_id=slow.thread_id, input={}, multitask=MultitaskStrategy.ENQUEUE)
    on_thread = Follower(await watcher.follow_thread(slow.thread_id))
    await status_of(starter, slow.run_id, RunStatus.RUNNING)
    await early.leave()
    assert (await other.cancel_run(queued.run_id)).status is RunStatus.CANCELLED
    assert (await other.cancel_run(slow.run_id)).status is RunStatus.CANCELLED
    await on_thread.leave()
    await status_of(starter, asked.run_id, RunStatus.INTERRUPTED)
    resumed = await start(thread_id=asked.thread_id, resume="yes")

    expected = {
        ok.run_id: RunStatus.SUCCESS,
        failed.run_id: RunStatus.ERROR,
        asked.run_id: RunStatus.INTERRUPTED,
        resumed.run_id: RunStatus.SUCCESS,
        slow.run_id: RunStatus.CANCELLED,
        queued.run_id: RunStatus.CANCELLED,
    }
    for run_id, status in {**expected, leaver.run_id: RunStatus.SUCCESS}.items():
        assert (await starter.executor.wait(run_id, limit=60)).status is status
    streams = [await f.result() for f in followers]
    for stream in streams:
        assert [e.seq for e in stream] == list(range(1, len(stream) + 1))
        assert stream[-1].payload["status"] == expected[stream[0].run_id].value
    return streams


async def test_maps_are_empty_after_runs_end_every_way(backend_config: CheckpointerConfig) -> None:
    settings = GatewaySettings(checkpointer=backend_config, graphs={"slow": SLOW_SPEC})
    async with Gateway(settings) as gw:
        assert set(gw.internal_sizes()) >= EXPECTED_MAPS
        await runs_ending_every_way(gw, gw, gw)
        await until_idle(gw)


@pytest.mark.postgres
async def test_maps_are_empty_on_every_replica(pg_database: str) -> None:
    """A serves and subscribes, B executes, C (`claim_others=False`, no slots) starts
    runs that end elsewhere: no replica keeps anything of any of them."""

    def settings(**more: Any) -> GatewaySettings:
        return GatewaySettings(
            checkpointer=create_postgres_checkpointer(pg_database),
            graphs={"slow": SLOW_SPEC},
            lease_seconds=1.5,
            event_recheck_interval=0.5,
            **more,
        )

    async with (
        Gateway(settings(max_concurrent_runs=0)) as a,
        Gateway(settings()) as b,
        Gateway(settings(max_concurrent_runs=0, claim_others=False)) as c,
    ):
        assert set(a.internal_sizes()) >= EXPECTED_MAPS | {"pgbus.relays", "pgbus.relay_tasks"}
        streams = await runs_ending_every_way(a, b, a)
        assert any(len(s) > 3 for s in streams), "A relayed events of runs executing on B"
        await runs_ending_every_way(c, b, a)
        await until_idle(a, b, c)
