"""Review of the trust branch: a deletion's promised CANCELLED end, seen from another replica.

Two gateways on one PostgreSQL database are two replicas: the run executes on A, a
subscriber follows it through B (whose bus relays A's events by reading the rows once
notified), and A deletes the thread. The deletion waits for the run's end to be
recorded, not for B to have relayed it: a relay that reads after the deletion finds
no rows, and B's subscriber ends NOT_FOUND instead of seeing CANCELLED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.errors import NotFoundError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import EventRecord, RunStatus
from code_hero.runs.events import EventType, terminal_status
from code_hero.runs.executor import StartRun
from tests.faults import until
from tests.persistence.proxied import behind_a_proxy, degraded
from tests.runs.conftest import SLOW_SPEC
from tests.runs.test_deletes import wait_status

pytestmark = pytest.mark.postgres


def _settings(url: str) -> GatewaySettings:
    return GatewaySettings(
        checkpointer=create_postgres_checkpointer(url, health_check_interval=0.2),
        graphs={"slow": SLOW_SPEC},
    )


async def test_a_follower_on_another_replica_sees_the_cancelled_end_of_a_deletion(
    pg_database: str,
) -> None:
    async with Gateway(_settings(pg_database)) as a:
        run = await a.start_run(StartRun(graph="slow", input={"delay": 30}))
        await wait_status(a, run.run_id, RunStatus.RUNNING)
        assert a.executor.is_active(run.run_id)  # A executes it; B only relays
        async with Gateway(_settings(pg_database)) as b:
            seen: list[EventRecord] = []
            outcome: list[Any] = []
            heard_running = asyncio.Event()

            async def follow() -> None:
                try:
                    async for event in await b.follow_run(run.run_id):
                        seen.append(event)
                        if event.payload.get("status") == "RUNNING":
                            heard_running.set()
                    outcome.append("completed")
                except NotFoundError as exc:
                    outcome.append(exc)

            follower = asyncio.create_task(follow())
            async with asyncio.timeout(30):
                await heard_running.wait()
            # B's relay reads share its pool with its runs: here they are all taken (a
            # busy replica) while A deletes the thread.
            relay_reads = b.bus._relay_reads  # type: ignore[attr-defined]
            held = 0
            while not relay_reads.locked():
                await relay_reads.acquire()
                held += 1
            try:
                gone = await a.delete_thread(run.thread_id)
            finally:
                for _ in range(held):
                    relay_reads.release()
            assert gone.deleted
            async with asyncio.timeout(30):
                await follower
    ends = [terminal_status(e) for e in seen if terminal_status(e) is not None]
    assert outcome == ["completed"], f"B's follower ended with {outcome!r}, not CANCELLED"
    assert ends == [RunStatus.CANCELLED]


async def _until(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0)


def _waits_for_a_save(task: asyncio.Task[Any]) -> bool:
    waiter = getattr(task, "_fut_waiter", None)
    return (
        isinstance(waiter, asyncio.Task)
        and getattr(waiter.get_coro(), "__name__", "") == "_checkpointer_put_after_previous"
    )


async def test_a_checkpoint_stored_on_the_fallback_as_its_run_is_cancelled_is_announced(
    pg_database: str,
) -> None:
    # During an outage a checkpoint's save to the fallback goes on to its end through a
    # cancel of its run (`to_its_end`: stored, journalled, copied back later), and only
    # then does the router raise CancelledError. The managed saver tells the run only
    # once `router.write` returns, so that stored checkpoint is never announced.
    async with behind_a_proxy(pg_database) as (gw, proxy):
        proxy.refuse()
        await until(lambda: degraded(gw))
        slot = gw.manager.router.active_slot
        assert slot is not None and slot is not gw.manager.router.primary
        saver = slot.backend.saver  # type: ignore[union-attr]
        aput = saver.aput
        held, release = asyncio.Event(), asyncio.Event()

        async def slow_first_save(config: Any, checkpoint: Any, metadata: Any, v: Any) -> Any:
            if metadata.get("source") == "input" and not release.is_set():
                held.set()
                await release.wait()
            return await aput(config, checkpoint, metadata, v)

        saver.aput = slow_first_save  # type: ignore[method-assign]
        try:
            run = await gw.start_run(StartRun(graph="slow", input={"delay": 0}))
            async with asyncio.timeout(30):  # a guard, not a measure
                await held.wait()
                task = gw.executor._tasks[run.run_id]
                await _until(lambda: _waits_for_a_save(task))
                cancel = asyncio.create_task(gw.cancel_run(run.run_id))
                await _until(lambda: task.cancelling() > 0)
                release.set()
                final = await cancel
        finally:
            release.set()
            del saver.aput
        assert final.status is RunStatus.CANCELLED
        events = await gw.events.read(run.run_id, types=[str(EventType.CHECKPOINT)])
        stored = await gw.manager.list_checkpoints(run.thread_id, first=100)
        assert stored.items, "the held save was dropped: nothing to check"
        announced = {e.payload["checkpoint_id"] for e in events}
        assert announced == {c.checkpoint_id for c in stored.items}
        proxy.forward()
