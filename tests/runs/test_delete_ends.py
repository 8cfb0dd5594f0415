"""Every run a thread's deletion takes ends CANCELLED before it goes, on memory, SQLite
and PostgreSQL: its followers see that end (the bus carries it), not a stream that
stops short of it, however many runs wait on the thread."""

from __future__ import annotations

from code_hero.gateway import Gateway
from code_hero.persistence.records import RunStatus
from code_hero.runs.events import terminal_status
from code_hero.runs.executor import MultitaskStrategy, StartRun
from tests.runs.test_deletes import wait_status


async def test_every_run_of_a_deleted_thread_ends_cancelled_before_it_goes(
    gateway: Gateway,
) -> None:
    first = await gateway.start_run(StartRun(graph="slow", input={"delay": 30}))
    queued = [
        await gateway.start_run(
            StartRun(
                graph="slow",
                thread_id=first.thread_id,
                input={},
                multitask=MultitaskStrategy.ENQUEUE,
            )
        )
        for _ in range(10)
    ]
    await wait_status(gateway, first.run_id, RunStatus.RUNNING)
    heard = gateway.bus.subscribe(thread_id=first.thread_id)
    try:
        gone = await gateway.delete_thread(first.thread_id)
        ends = {}
        while not heard.queue.empty():
            event = heard.queue.get_nowait()
            status = terminal_status(event)
            if status is not None:
                ends[event.run_id] = status
    finally:
        gateway.bus.unsubscribe(heard)
    assert gone.deleted and gone.runs_deleted == 11
    assert heard.overflowed is False
    assert ends == {run.run_id: RunStatus.CANCELLED for run in [first, *queued]}
