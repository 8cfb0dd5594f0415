"""Every run a thread's deletion takes ends CANCELLED before it goes, on memory, SQLite
and PostgreSQL: its followers see that end (the bus carries it), not a stream that
stops short of it, however many runs wait on the thread; and where no claim loop would
end a queued run (a one-shot CLI gateway, a gateway shutting down), the deletion ends
it itself rather than wait a lease for nobody."""

from __future__ import annotations

from dataclasses import replace

import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.runs.events import terminal_status
from code_hero.runs.executor import MultitaskStrategy, StartRun
from tests.runs.conftest import SLOW_SPEC
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


def _settings(url: str) -> GatewaySettings:
    return GatewaySettings(
        checkpointer=create_postgres_checkpointer(url, health_check_interval=0.2),
        graphs={"slow": SLOW_SPEC},
    )


@pytest.mark.postgres
async def test_a_deletion_as_shutdown_begins_ends_its_queued_runs_cancelled(
    pg_database: str,
) -> None:
    # A deleteThread in flight when the drain begins (claiming stopped, running runs
    # given their grace): the queued run of the thread is flagged and waited for, but no
    # claim loop is left to end it here. The deletion waits out 5 s + a lease for
    # nothing, then takes the run still PENDING: its follower never sees CANCELLED.
    async with Gateway(_settings(pg_database)) as gw:
        first = await gw.start_run(StartRun(graph="slow", input={"delay": 30}))
        queued = await gw.start_run(
            StartRun(
                graph="slow",
                thread_id=first.thread_id,
                input={},
                multitask=MultitaskStrategy.ENQUEUE,
            )
        )
        await wait_status(gw, first.run_id, RunStatus.RUNNING)
        heard = gw.bus.subscribe(thread_id=first.thread_id)
        try:
            gw.executor.claims.stop_claiming()  # what executor.shutdown does first
            gone = await gw.delete_thread(first.thread_id)
            ends: dict[str, RunStatus] = {}
            while not heard.queue.empty():
                event = heard.queue.get_nowait()
                status = terminal_status(event)
                if status is not None:
                    ends[event.run_id] = status
        finally:
            gw.bus.unsubscribe(heard)
    assert gone.deleted and gone.runs_deleted == 2
    assert ends == {first.run_id: RunStatus.CANCELLED, queued.run_id: RunStatus.CANCELLED}


@pytest.mark.postgres
async def test_the_operators_deletion_ends_a_queued_run_cancelled(pg_database: str) -> None:
    # `code-hero threads delete` and `code-hero prune` run a one-shot gateway that claims
    # only the runs it started (claim_others=False), so its claim loop never ends the
    # cancelled runs nobody holds. With no server replica up (maintenance), each thread
    # with a queued run waits 5 s + a lease and is then deleted with the run PENDING,
    # never CANCELLED: `prune` pays it once per such thread, one after another.
    settings = replace(_settings(pg_database), claim_others=False)
    async with Gateway(settings) as gw:
        first = await gw.start_run(StartRun(graph="slow", input={"delay": 30}))
        queued = await gw.start_run(
            StartRun(
                graph="slow",
                thread_id=first.thread_id,
                input={},
                multitask=MultitaskStrategy.ENQUEUE,
            )
        )
        await wait_status(gw, first.run_id, RunStatus.RUNNING)
        heard = gw.bus.subscribe(thread_id=first.thread_id)
        try:
            gone = await gw.delete_thread(first.thread_id)
            ends: dict[str, RunStatus] = {}
            while not heard.queue.empty():
                event = heard.queue.get_nowait()
                status = terminal_status(event)
                if status is not None:
                    ends[event.run_id] = status
        finally:
            gw.bus.unsubscribe(heard)
    assert gone.deleted and gone.runs_deleted == 2
    assert ends == {first.run_id: RunStatus.CANCELLED, queued.run_id: RunStatus.CANCELLED}
