"""A run's `CheckpointSaved` event never names a checkpoint the database lacks.

LangGraph saves a checkpoint in a background task and streams it at once: the
run's first checkpoint (its input) is streamed, so published, while its save may
still be in flight. With `durability="sync"` the run then awaits the next step's
save, which awaits that first one: a cancel landing there went down the chain and
cancelled the first save (a write queued for a group commit was dropped, one held
by the lock never sent), so the published event named a checkpoint that was never
stored and a client asking for it got NOT_FOUND.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from code_hero.gateway import Gateway
from code_hero.persistence.records import RunStatus
from code_hero.runs.events import EventType
from code_hero.runs.executor import StartRun


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


async def test_a_cancel_does_not_drop_a_checkpoint_whose_event_was_published(
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
            published = await gateway.events.read(run.run_id, types=[str(EventType.CHECKPOINT)])
            assert [e.payload["step"] for e in published] == [-1]  # the held one, published
            cancel = asyncio.create_task(gateway.cancel_run(run.run_id))
            await _until(lambda: task.cancelling() > 0)  # cancelled: it reached the save
            release.set()
            final = await cancel
    finally:
        release.set()
        del saver.aput
    assert final.status is RunStatus.CANCELLED  # the cancel still stops the run
    events = await gateway.events.read(run.run_id, types=[str(EventType.CHECKPOINT)])
    assert events, "the run published no CheckpointSaved event"
    for event in events:
        view = await gateway.manager.get_checkpoint(
            run.thread_id, event.payload["checkpoint_id"], event.payload["namespace"]
        )
        assert view is not None, f"event {event.seq} names a checkpoint never stored"
