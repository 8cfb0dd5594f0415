"""A run's `CheckpointSaved` event never names a checkpoint the database lacks.

LangGraph saves a checkpoint in a background task and streams it at once: the
run's first checkpoint (its input) is streamed, so published, while its save may
still be in flight. With `durability="sync"` the run then awaits the next step's
save, which awaits that first one: a cancel landing there went down the chain and
cancelled the first save (a write queued for a group commit was dropped, one held
by the lock never sent), so the published event named a checkpoint that was never
stored and a client asking for it got NOT_FOUND.

So a checkpoint is announced once its save returned (the managed saver tells the
run), never from the stream; the cancel waits for no save (the two tests on a held
lock guard that: awaiting the save through the cancel was tried, and reverted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.runs.events import EventType
from code_hero.runs.executor import StartRun
from tests.faults import until
from tests.persistence.proxied import behind_a_proxy, degraded
from tests.runs.conftest import SLOW_SPEC


async def _until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (the caller bounds the wait)."""
    while True:
        if condition():
            return
        await asyncio.sleep(0)


def _waits_for_a_save(task: asyncio.Task[Any]) -> bool:
    """Whether the run's task is suspended on LangGraph's save of a checkpoint (the
    `durability="sync"` wait after a step): the innermost future its coroutines await."""
    waiter = getattr(task, "_fut_waiter", None)
    return (
        isinstance(waiter, asyncio.Task)
        and getattr(waiter.get_coro(), "__name__", "") == "_checkpointer_put_after_previous"
    )


async def test_a_checkpoint_whose_save_a_cancel_drops_is_never_announced(
    gateway: Gateway,
) -> None:
    saver = gateway.manager.router.primary.backend.saver
    aput = saver.aput
    held, release = asyncio.Event(), asyncio.Event()

    async def slow_first_save(config: Any, checkpoint: Any, metadata: Any, versions: Any) -> Any:
        # The run's input checkpoint is slow to store (a busy database: its write
        # queued behind another thread's group) until the test lets it go.
        if metadata.get("source") == "input" and not release.is_set():
            held.set()
            await release.wait()
        return await aput(config, checkpoint, metadata, versions)

    saver.aput = slow_first_save  # the real saver underneath, on the real database
    try:
        run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}))
        executor = gateway.executor
        async with asyncio.timeout(30):  # a guard, not a measure
            await held.wait()
            task = executor._tasks[run.run_id]
            # Step s0 has run and its own save waits on the held one: the run awaits it.
            await _until(lambda: _waits_for_a_save(task))
            # LangGraph has streamed the held checkpoint; its save has not returned, so it
            # is not announced (it was, and the cancel below then dropped its save).
            published = await gateway.events.read(run.run_id, types=[str(EventType.CHECKPOINT)])
            assert published == []
            cancel = asyncio.create_task(gateway.cancel_run(run.run_id))
            await _until(lambda: task.cancelling() > 0)  # cancelled: it reached the save
            release.set()
            final = await cancel
    finally:
        release.set()
        del saver.aput
    assert final.status is RunStatus.CANCELLED  # the cancel still stops the run
    events = await gateway.events.read(run.run_id, types=[str(EventType.CHECKPOINT)])
    # Announced: exactly the checkpoints stored (whichever saves the cancel let end).
    stored = await gateway.manager.list_checkpoints(run.thread_id, first=100)
    assert {e.payload["checkpoint_id"] for e in events} == {c.checkpoint_id for c in stored.items}
    for event in events:
        view = await gateway.manager.get_checkpoint(
            run.thread_id, event.payload["checkpoint_id"], event.payload["namespace"]
        )
        assert view is not None, f"event {event.seq} names a checkpoint never stored"

    # Not by announcing nothing: a run whose saves end announces each checkpoint stored.
    again = await gateway.start_run(
        StartRun(graph="slow", thread_id=run.thread_id, input={"delay": 0}, wait=True)
    )
    assert again.status is RunStatus.SUCCESS
    events = await gateway.events.read(again.run_id, types=[str(EventType.CHECKPOINT)])
    stored = await gateway.manager.list_checkpoints(run.thread_id, first=100)
    assert len(events) == len(stored.items) > 0
    assert [e.payload["checkpoint_id"] for e in events] == [
        c.checkpoint_id for c in reversed(stored.items)
    ]


@pytest.mark.postgres
async def test_a_run_cancelled_while_its_input_save_waits_for_a_held_lock_stops(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Another session holds the checkpoints table (a VACUUM FULL, a migration) from
    # before the run's first save: the run's input checkpoint waits for it, its write
    # retried at each lock bound for as long as it is held (`FallbackRouter.write`).
    # A cancel stops a run whose step's save waits so (test_held_table); the input
    # save's, awaited to its end through the cancel, kept the run executing (and
    # cancelRun answering RUNNING after its 5 s) for as long as the lock was held.
    caplog.set_level(logging.DEBUG, logger="code_hero.persistence.fallback")
    config = create_postgres_checkpointer(pg_database, lock_timeout=0.2)
    settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_SPEC})
    async with Gateway(settings) as gw:
        async with await psycopg.AsyncConnection.connect(pg_database) as holder:
            await holder.execute("LOCK TABLE checkpoints IN EXCLUSIVE MODE")  # reads go on
            try:
                run = await gw.start_run(StartRun(graph="slow", input={"delay": 0}))
                async with asyncio.timeout(30):  # a guard, not a measure
                    await _until_logged(caplog, "waits for a lock")
                final = await gw.cancel_run(run.run_id)
                stopped = not gw.executor.is_active(run.run_id)
            finally:
                await holder.rollback()
        async with asyncio.timeout(30):  # a guard: the run ends once the lock is gone
            final = await gw.executor.wait(run.run_id)
    assert stopped, "the cancelled run executed on for as long as the table was locked"
    assert final.status is RunStatus.CANCELLED


async def _until_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    async def logged() -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    await until(logged, limit=30)  # a guard, not a measure


@pytest.mark.postgres
async def test_a_drain_hands_on_a_run_whose_input_save_waits_for_a_held_lock(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A server told to stop gives its runs their grace, then stops the rest and gives
    # their leases up, so another replica resumes them at once. The run's input save,
    # awaited to its end through that stop, kept the run executing past the server's
    # close (its lease renewed meanwhile, never given up): resumed elsewhere only once
    # the lease lapsed, and its task left pending on a closed gateway.
    caplog.set_level(logging.DEBUG, logger="code_hero.persistence.fallback")
    config = create_postgres_checkpointer(pg_database, lock_timeout=0.2)
    settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_SPEC}, shutdown_grace=0.1)
    async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as reader:
        async with await psycopg.AsyncConnection.connect(pg_database) as holder:
            try:
                async with Gateway(settings) as gw:
                    await holder.execute("LOCK TABLE checkpoints IN EXCLUSIVE MODE")
                    run = await gw.start_run(StartRun(graph="slow", input={"delay": 0}))
                    async with asyncio.timeout(30):  # a guard, not a measure
                        await _until_logged(caplog, "waits for a lock")
                    task = gw.executor._tasks[run.run_id]
                ended = task.done()
                cursor = await reader.execute(
                    "SELECT lease_owner FROM code_hero_runs WHERE run_id = %s", (run.run_id,)
                )
                (owner,) = await cursor.fetchone() or (None,)
            finally:
                await holder.rollback()
        async with asyncio.timeout(30):  # a guard: the task ends once the lock is gone
            await asyncio.wait([task])
    assert ended, "the stopped run executed on past the server's close"
    assert owner is None, "the stopped run's lease was not given up"


@pytest.mark.postgres
async def test_a_checkpoint_stored_on_the_fallback_as_its_run_is_cancelled_is_announced(
    pg_database: str,
) -> None:
    # During an outage a checkpoint's save to the fallback goes on to its end through a
    # cancel of its run (`to_its_end`: stored, journalled, copied back later), and only
    # then does the router raise CancelledError: it tells the managed saver of the
    # stored checkpoint first, which announces it (told only once `router.write`
    # returned, it was never announced).
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
