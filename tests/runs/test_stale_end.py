"""A run taken over while its executor stalled past the lease: that executor's end,
when it wakes, is not recorded, and its waiters follow the run as the new holder ends it.

The stall is played without sleeping: the run's last step returns, then (before its
end is recorded) the row is leased to another executor, as a replica that claimed the
lapsed run leaves it, and with `lapsed` this executor's own clock is past its lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import (
    THREAD_STATUS_AFTER,
    EventRecord,
    RunRecord,
    RunStatus,
)
from code_hero.runs.events import EventType
from code_hero.runs.executor import StartRun
from tests.runs.conftest import SLOW_SPEC, the_next_end_fails

OTHER = "executor-other"


@pytest.fixture
async def gateway(backend_config: CheckpointerConfig) -> AsyncIterator[Gateway]:
    # A long lease: no renewal comes during the test to notice the takeover first.
    settings = GatewaySettings(
        checkpointer=backend_config, graphs={"slow": SLOW_SPEC}, lease_seconds=120
    )
    async with Gateway(settings) as gw:
        yield gw


async def stalled_and_taken_over(gw: Gateway, *, lapsed: bool) -> tuple[RunRecord, Any]:
    """Run the slow graph to its last step; take it over before its end is recorded.
    Returns the run and its task (ended once this executor is done with it)."""
    executor = gw.executor
    stream = executor._stream
    tasks: list[asyncio.Task[Any]] = []
    stalled = asyncio.Event()

    async def stream_then_stall(record: RunRecord, *args: Any) -> Any:
        ended = await stream(record, *args)
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        now = datetime.now(UTC)
        await gw.manager.registry.update_run(
            record.run_id, lease_owner=OTHER, lease_expires_at=now + timedelta(hours=1)
        )
        if lapsed:  # as this process's clock reads when it wakes up
            executor.claims._expires[record.run_id] = now - timedelta(seconds=1)
        stalled.set()
        return ended

    executor._stream = stream_then_stall  # type: ignore[method-assign]
    run = await gw.start_run(StartRun(graph="slow", input={"delay": 0.0}))
    waiter = asyncio.create_task(executor.wait(run.run_id))
    await stalled.wait()
    await asyncio.wait(tasks)  # this executor is done with the run
    assert not waiter.done(), "the waiter follows the run: it has not ended"
    return run, waiter


@pytest.mark.parametrize("lapsed", [True, False], ids=["lapsed", "lost-as-it-ended"])
async def test_an_end_after_a_takeover_is_not_recorded(gateway: Gateway, lapsed: bool) -> None:
    run, waiter = await stalled_and_taken_over(gateway, lapsed=lapsed)
    registry = gateway.manager.registry
    row = await registry.get_run(run.run_id)
    assert row is not None
    assert row.status is RunStatus.RUNNING, "the stalled executor's end is not recorded"
    assert row.lease_owner == OTHER
    if lapsed:  # known before its last event: none is written or published
        events = await gateway.events.read(run.run_id)
        statuses = [e.payload["status"] for e in events if e.type == EventType.STATUS.value]
        assert set(statuses) <= {RunStatus.PENDING.value, RunStatus.RUNNING.value}
    # The replica that took the run over ends it: the waiter here reports that end.
    ended, _ = await registry.finish_run(
        run.run_id,
        THREAD_STATUS_AFTER[RunStatus.ERROR],
        if_leased_by=OTHER,
        status=RunStatus.ERROR,
        error="ended by the replica that took it over",
        finished_at=datetime.now(UTC),
        lease_owner=None,
        lease_expires_at=None,
    )
    assert ended is not None
    final = await asyncio.wait_for(waiter, 10)
    assert (final.status, final.error) == (RunStatus.ERROR, ended.error)
    assert gateway.executor.internal_sizes() == dict.fromkeys(gateway.executor.internal_sizes(), 0)


@pytest.mark.parametrize("lapsed", [True, False], ids=["lapsed", "lost-as-it-ended"])
async def test_an_end_refused_after_a_takeover_purges_nothing(
    gateway: Gateway, lapsed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refused end went on to purge the thread's leftovers as if the run had gone with
    # its thread: a purge decided for a run that is not this executor's (its thread's
    # row kept the checkpoints, a round trip spent to learn that).
    router = gateway.manager.router
    purge_orphan = router.purge_orphan
    purged: list[str] = []

    async def purge(thread_id: str) -> bool | None:
        purged.append(thread_id)
        return await purge_orphan(thread_id)

    monkeypatch.setattr(router, "purge_orphan", purge)
    run, waiter = await stalled_and_taken_over(gateway, lapsed=lapsed)
    waiter.cancel()
    assert purged == []
    assert await router.count_checkpoints(run.thread_id) > 0


async def test_an_end_refused_after_the_lease_check_stores_and_publishes_none_of_it(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run is taken over between this executor's look at its lease (held) and its
    # end (a stall, or clocks that differ by over half the lease). Its last events were
    # stored before the end's conditional write: the log got an end its row does not
    # record, and the new holder, numbering on from what it read when it took the run
    # over, collided with those seqs (its writer fenced). Now they go with the end.
    executor, registry, bus = gateway.executor, gateway.manager.registry, gateway.events.bus
    still_held = executor.claims.still_held
    tasks: list[asyncio.Task[None]] = []
    looked = asyncio.Event()
    taken_at: list[int] = []  # the last seq stored when the new holder took the run
    heard: list[EventRecord] = []  # published here, or notified to other processes
    publish, stored = bus.publish, bus.stored

    async def held_then_taken_over(run_id: str) -> bool:
        held = await still_held(run_id)
        tasks.append(executor._tasks[run_id])
        looked.set()
        await gateway.events.flush()  # its steps are stored: what is left is its end
        taken_at.append(await registry.last_seq(run_id))
        await registry.update_run(
            run_id, lease_owner=OTHER, lease_expires_at=datetime.now(UTC) + timedelta(hours=1)
        )
        monkeypatch.setattr(bus, "publish", lambda e: (heard.append(e), publish(e))[1])

        async def notify(events: Any, control: str | None = None) -> None:
            heard.extend(events)
            await stored(events, control)

        monkeypatch.setattr(bus, "stored", notify)
        return held

    monkeypatch.setattr(executor.claims, "still_held", held_then_taken_over)
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.0}))
    await looked.wait()
    await asyncio.wait(tasks)  # this executor is done with the run
    assert executor.internal_sizes() == dict.fromkeys(executor.internal_sizes(), 0)
    row = await registry.get_run(run.run_id)
    assert row is not None
    assert (row.status, row.lease_owner) == (RunStatus.RUNNING, OTHER)
    last = taken_at[0]
    assert [e for e in heard if e.run_id == run.run_id] == [], "nothing of the end is heard"
    assert await registry.last_seq(run.run_id) == last, "nothing of the end is stored"
    await the_holder_numbers_on(registry, run, last)


@pytest.mark.parametrize("noticed", ["stalled", "lost-at-a-renewal"])
async def test_an_end_that_fails_after_a_takeover_stores_none_of_its_events(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, noticed: str
) -> None:
    # An end that fails leaves the run's last events to be stored as a running run's
    # are (tests/runs/test_events.py): not when the run was taken over meanwhile, where
    # they could collide with the new holder's and fence its writer. Taken over as this
    # process stalled (its lease's expiry passed), or found lost by a renewal while the
    # end was under way (the lease as known here still good).
    executor, registry = gateway.executor, gateway.manager.registry

    async def taken_over(run_id: str) -> None:
        now = datetime.now(UTC)
        await registry.update_run(
            run_id, lease_owner=OTHER, lease_expires_at=now + timedelta(hours=1)
        )
        if noticed == "stalled":
            executor.claims._expires[run_id] = now - timedelta(seconds=1)
        else:
            executor._lost.add(run_id)  # what the renewal loop marks

    failed = the_next_end_fails(
        gateway, monkeypatch, RuntimeError("deadlock detected"), before=taken_over
    )
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.0}))
    assert isinstance((await failed()).exception(), RuntimeError)
    assert await registry.last_seq(run.run_id) == 1, "only its first event, stored with it"
    assert not gateway.events.is_writing(run.run_id)


async def test_a_cancel_asked_of_a_run_taken_over_reaches_its_holder(gateway: Gateway) -> None:
    # Cancelled here as it was taken over: the flag is left for the executor that
    # holds it now (no end recorded here), which stops it at its next lease renewal.
    executor = gateway.executor
    stream = executor._stream
    tasks: list[asyncio.Task[Any]] = []
    stalled = asyncio.Event()

    async def stall_then_cancel(record: RunRecord, *args: Any) -> Any:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        now = datetime.now(UTC)
        await gateway.manager.registry.update_run(
            record.run_id, lease_owner=OTHER, lease_expires_at=now + timedelta(hours=1)
        )
        executor.claims._expires[record.run_id] = now - timedelta(seconds=1)
        stalled.set()
        return await stream(record, *args)

    executor._stream = stall_then_cancel  # type: ignore[method-assign]
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.5}))
    await stalled.wait()
    cancelled = await executor.cancel(run.run_id)
    await asyncio.wait(tasks)
    assert cancelled.status is RunStatus.RUNNING, "not ended here"
    row = await gateway.manager.registry.get_run(run.run_id)
    assert row is not None
    assert (row.status, row.lease_owner, row.cancel_requested) == (
        RunStatus.RUNNING,
        OTHER,
        True,
    )


async def test_an_end_under_a_lease_still_held_is_recorded(gateway: Gateway) -> None:
    # A lease lapsed by this process's clock that no one took over is renewed and kept.
    executor = gateway.executor
    stream = executor._stream

    async def stream_then_stall(record: RunRecord, *args: Any) -> Any:
        ended = await stream(record, *args)
        executor.claims._expires[record.run_id] = datetime.now(UTC) - timedelta(seconds=1)
        return ended

    executor._stream = stream_then_stall  # type: ignore[method-assign]
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.0}, wait=True))
    assert run.status is RunStatus.SUCCESS
    assert run.lease_owner is None


async def test_a_run_lost_at_a_renewal_stores_none_of_its_pending_events(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease renewal finds the run held by another executor (taken over as this one
    # stalled) and stops it as lost: the events it had emitted and not stored yet were
    # stored as its writer closed, numbered after what the new holder read when it took
    # the run over: the holder's own collided with them (its writer fenced, or its end's
    # events skipped as stored already) or came after them. Now they are dropped.
    executor, registry, events = gateway.executor, gateway.manager.registry, gateway.events
    monkeypatch.setattr(events, "flush_interval", 3600.0)  # stored only as it closes
    stream = executor._stream
    tasks: list[asyncio.Task[Any]] = []
    taken_at: list[int] = []  # the last seq stored when the new holder took the run
    stale: list[EventRecord] = []
    stalled = asyncio.Event()

    async def taken_over_then_lost(record: RunRecord, writer: Any, *args: Any) -> Any:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        stalled.set()
        await events.flush()
        taken_at.append(await registry.last_seq(record.run_id))
        await registry.update_run(
            record.run_id,
            lease_owner=OTHER,
            lease_expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
        stale.append(writer.emit(EventType.CUSTOM, {"stale": True}))  # pending here
        executor.stop(record.run_id, lost=True)  # as the renewal that found it not held
        return await stream(record, writer, *args)

    executor._stream = taken_over_then_lost  # type: ignore[method-assign]
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.0}))
    await stalled.wait()
    await asyncio.wait(tasks)  # this executor is done with the run
    assert executor.internal_sizes() == dict.fromkeys(executor.internal_sizes(), 0)
    assert events.internal_sizes() == dict.fromkeys(events.internal_sizes(), 0)
    last = taken_at[0]
    assert stale[0].seq == last + 1, "it was numbered where the new holder numbers on"
    assert await registry.last_seq(run.run_id) == last, "nothing pending here is stored"
    row = await registry.get_run(run.run_id)
    assert row is not None
    assert (row.status, row.lease_owner) == (RunStatus.RUNNING, OTHER)
    await the_holder_numbers_on(registry, run, last)


async def the_holder_numbers_on(registry: Any, run: Any, last: int) -> None:
    """The new holder numbers on from where it took the run over: nothing collides."""
    theirs = [
        EventRecord(run.run_id, run.thread_id, last + i, EventType.STATUS.value, payload, at)
        for i, payload, at in (
            (1, {"status": RunStatus.RUNNING.value, "error": None}, datetime.now(UTC)),
            (2, {"status": RunStatus.SUCCESS.value, "error": None}, datetime.now(UTC)),
        )
    ]
    await registry.store_events(theirs)
    after = await registry.list_events(run.run_id, after_seq=last)
    assert [(e.seq, e.payload) for e in after] == [(e.seq, e.payload) for e in theirs]


async def test_a_flush_after_a_takeover_stores_none_of_the_stalled_events(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Back from a stall past its lease (SIGSTOP, a GC pause), the executor flushed the
    # events it had emitted before any renewal told it the run was taken over: stored at
    # the seqs the new holder numbers on from, they made the holder's collide, its
    # writer fenced, and the run ended SUCCESS with no final status event in its log.
    executor, registry, events = gateway.executor, gateway.manager.registry, gateway.events
    monkeypatch.setattr(events, "flush_interval", 3600.0)  # stored when flushed below
    stream = executor._stream
    tasks: list[asyncio.Task[Any]] = []
    taken_at: list[int] = []
    writers: list[Any] = []
    stalled = asyncio.Event()

    async def stalled_then_flushed(record: RunRecord, writer: Any, *args: Any) -> Any:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        writers.append(writer)
        await events.flush()
        writer.emit(EventType.CUSTOM, {"stale": True})  # emitted before the stall
        taken_at.append(await registry.last_seq(record.run_id))
        await registry.update_run(  # the new holder claims the lapsed run
            record.run_id,
            lease_owner=OTHER,
            lease_expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
        await events.flush()  # the flush timer, due as the process wakes up
        stalled.set()
        executor.stop(record.run_id, lost=True)  # the renewal, later
        return await stream(record, writer, *args)

    executor._stream = stalled_then_flushed  # type: ignore[method-assign]
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.0}))
    await stalled.wait()
    last = taken_at[0]
    assert await registry.last_seq(run.run_id) == last, "nothing is stored after the takeover"
    assert writers[0].closed, "the writer takes no more events"
    await asyncio.wait(tasks)
    assert events.internal_sizes() == dict.fromkeys(events.internal_sizes(), 0)
    # Nor is the run kept as executing here (its end asked the registry nothing): in
    # an outage, this process would go on with it from that copy.
    sizes = gateway.executor.registry.internal_sizes()  # type: ignore[attr-defined]
    assert sizes == dict.fromkeys(sizes, 0)
    await the_holder_numbers_on(registry, run, last)


async def test_a_run_claimed_back_after_a_flush_found_it_anothers_is_not_ended_here(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A flush found the run another executor's (its events left out, its writer
    # fenced); that holder released it and this executor's claim pass took it back
    # while its task still ran ("renewed, not lost: one task"). The task went on with
    # the fenced writer and recorded SUCCESS with none of its later events and no final
    # status event in its log. Now its end is not recorded here: left to its lease, the
    # next claimer resumes it and ends it with its log whole.
    executor, registry, events = gateway.executor, gateway.manager.registry, gateway.events
    monkeypatch.setattr(events, "flush_interval", 3600.0)
    stream = executor._stream
    tasks: list[asyncio.Task[Any]] = []
    started = asyncio.Event()

    async def refused_then_claimed_back(record: RunRecord, writer: Any, *args: Any) -> Any:
        if not tasks:  # the first execution only
            tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            started.set()
            await events.flush()
            writer.emit(EventType.CUSTOM, {"stale": True})
            await registry.update_run(
                record.run_id,
                lease_owner=OTHER,
                lease_expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
            await events.flush()  # left out: OTHER holds the run
            await registry.release_runs(OTHER, [record.run_id])  # OTHER gives it back
            await executor.claims.claim_once()  # claimed here again: the task goes on
            row = await registry.get_run(record.run_id)
            assert row is not None and row.lease_owner == executor.owner
        return await stream(record, writer, *args)

    executor._stream = refused_then_claimed_back  # type: ignore[method-assign]
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.0}))
    await started.wait()
    await asyncio.wait(tasks)
    # Nor kept as executing here: the claim back added it to the registry's bookkeeping
    # again after the flush's lost answer dropped it (`RunExecutor._give_up`).
    assert executor.active_runs == 0
    sizes = executor.registry.internal_sizes()  # type: ignore[attr-defined]
    assert sizes == dict.fromkeys(sizes, 0)
    row = await registry.get_run(run.run_id)
    assert row is not None and row.status is RunStatus.RUNNING, row  # not ended here
    stored = await registry.list_events(run.run_id)
    said = [RunStatus(e.payload["status"]) for e in stored if e.type == EventType.STATUS.value]
    assert said[-1] is RunStatus.RUNNING and not [s for s in said if s.finished], said
    # Its lease lapses (here: given up) and the next claim resumes it.
    await registry.release_runs(executor.owner, [run.run_id])
    await executor.claims.claim_once()
    for _ in range(200):
        row = await registry.get_run(run.run_id)
        if row is not None and row.status.finished:
            break
        await asyncio.sleep(0.05)
    assert row is not None and row.status is RunStatus.SUCCESS, row
    logged = await registry.list_events(run.run_id)
    assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
    assert not [e for e in logged if e.payload.get("stale")]
    assert logged[-1].type == EventType.STATUS.value
    assert logged[-1].payload["status"] == RunStatus.SUCCESS.value


async def test_a_run_whose_flush_collided_is_not_kept_as_executing(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A flush whose events collide with stored ones (ConflictError, the lease this
    # executor's still) fences the writer in `EventLog._store_apart`; the registry is
    # told at the run's end (`RunExecutor._give_up`), the store having raised.
    executor, registry, events = gateway.executor, gateway.manager.registry, gateway.events
    monkeypatch.setattr(events, "flush_interval", 3600.0)
    stream = executor._stream
    tasks: list[asyncio.Task[Any]] = []
    writers: list[Any] = []
    started = asyncio.Event()

    async def collided(record: RunRecord, writer: Any, *args: Any) -> Any:
        if not tasks:
            tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            writers.append(writer)
            started.set()
            await events.flush()
            writer.emit(EventType.CUSTOM, {"stale": True})
            seq = writer.pending[-1].seq
            await registry.store_events(  # another executor wrote that seq
                [EventRecord(record.run_id, record.thread_id, seq, "custom", {}, datetime.now(UTC))]
            )
            await events.flush()
        return await stream(record, writer, *args)

    executor._stream = collided  # type: ignore[method-assign]
    await gateway.start_run(StartRun(graph="slow", input={"delay": 0.0}))
    await started.wait()
    await asyncio.wait(tasks)
    assert writers[0].lost
    sizes = executor.registry.internal_sizes()  # type: ignore[attr-defined]
    assert sizes == dict.fromkeys(sizes, 0)
