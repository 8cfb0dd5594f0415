"""A run started where a slot is free skips the claim pass, on every backend: it is
admitted leased to this executor and launched at once, unless its thread has an older
unfinished run (then it waits its turn unleased, for a claim); admitted as claiming
stops, it is handed back, not left leased to nobody."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from code_hero.gateway import Gateway
from code_hero.persistence import clock
from code_hero.persistence.records import RunRecord, RunStatus
from code_hero.runs.executor import MultitaskStrategy, StartRun
from tests.faults import until
from tests.runs.conftest import idle_thread


def claimed_by_passes(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the runs claim passes (here) take from now on."""
    registry, taken = gateway.manager.registry, list[str]()
    claim = registry.claim_runs

    async def claim_runs(*args: Any, **kwargs: Any) -> list[RunRecord]:
        runs = await claim(*args, **kwargs)
        taken.extend(run.run_id for run in runs)
        return runs

    monkeypatch.setattr(registry, "claim_runs", claim_runs)
    return taken


async def start_with_the_slot_free(gateway: Gateway, ended: str) -> RunRecord:
    """Start a run once the slot of the run `ended` is given back (its waiters hear of
    its end first), with no claim pass going (a timer's pass reserves the free slots
    while it claims, and a start meanwhile is admitted for a claim)."""
    executor = gateway.executor

    async def freed() -> bool:
        return not executor.is_active(ended)

    await until(freed)
    async with executor.claims._claiming:
        return await gateway.start_run(StartRun(graph="slow", input={"delay": 0}))


async def test_a_run_started_with_a_slot_free_runs_without_a_claim(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = claimed_by_passes(gateway, monkeypatch)
    fresh = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
    later = await gateway.start_run(
        StartRun(graph="slow", thread_id=fresh.thread_id, input={"delay": 0}, wait=True)
    )
    assert [fresh.status, later.status] == [RunStatus.SUCCESS, RunStatus.SUCCESS]
    assert later.output["steps"] == fresh.output["steps"] * 2  # on from the first's state
    assert taken == [], "a new thread's run and an idle thread's: neither claimed"
    assert fresh.lease_owner is None and later.lease_owner is None  # ended, lease cleared
    executor = gateway.executor
    assert executor.internal_sizes() == dict.fromkeys(executor.internal_sizes(), 0)
    assert executor.claims._admitting == 0


async def test_an_enqueued_run_waits_for_the_one_before_it(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = claimed_by_passes(gateway, monkeypatch)
    first = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.05}))
    assert first.lease_owner == gateway.executor.owner  # admitted claimed here
    second = await gateway.start_run(
        StartRun(
            graph="slow",
            thread_id=first.thread_id,
            input={"delay": 0},
            multitask=MultitaskStrategy.ENQUEUE,
        )
    )
    assert second.lease_owner is None, "not the oldest of its thread: left to a claim"
    ended = await gateway.executor.wait(second.run_id, limit=60)
    before = await gateway.executor.wait(first.run_id, limit=60)
    assert [before.status, ended.status] == [RunStatus.SUCCESS, RunStatus.SUCCESS]
    assert before.finished_at is not None and ended.started_at is not None
    assert ended.started_at >= before.finished_at, "one run of a thread at a time"
    assert taken == [second.run_id]


async def test_a_run_admitted_as_claiming_stops_is_handed_back(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor, registry = gateway.executor, gateway.manager.registry
    admit = registry.admit_run

    async def shutdown_begins_meanwhile(*args: Any, **kwargs: Any) -> Any:
        admitted = await admit(*args, **kwargs)
        executor.claims.stop_claiming()
        return admitted

    monkeypatch.setattr(registry, "admit_run", shutdown_begins_meanwhile)
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}))
    assert run.lease_owner == executor.owner  # leased here as it was admitted
    stored = await registry.get_run(run.run_id)
    assert stored is not None and stored.status is RunStatus.PENDING
    assert stored.lease_owner is None and stored.lease_expires_at is None, "given back"
    assert not executor.is_active(run.run_id)
    assert executor.claims._admitting == 0


async def test_a_start_cancelled_as_its_run_is_admitted_leaves_the_run_going(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller gone (a client that disconnected) once the run is admitted leased
    here: the run is launched all the same, not left leased to nobody for a lease."""
    registry = gateway.manager.registry
    admit, admitted, go_on = registry.admit_run, asyncio.Event(), asyncio.Event()
    ids: list[str] = []

    async def caller_goes_meanwhile(run: RunRecord, **kwargs: Any) -> Any:
        result = await admit(run, **kwargs)
        ids.append(run.run_id)
        admitted.set()
        await go_on.wait()
        return result

    monkeypatch.setattr(registry, "admit_run", caller_goes_meanwhile)
    start = asyncio.create_task(gateway.start_run(StartRun(graph="slow", input={"delay": 0})))
    await admitted.wait()
    start.cancel()
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await start
    ended = await gateway.executor.wait(ids[0], limit=10)  # well within the lease (15 s)
    assert ended.status is RunStatus.SUCCESS
    assert gateway.executor.claims._admitting == 0


async def test_a_run_admitted_with_no_slot_left_is_claimed_later(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slot kept for it taken after all (the admission keeps none then: here a
    lower limit meanwhile): released, and claimed once a slot is free."""
    executor, registry = gateway.executor, gateway.manager.registry
    claims, admit = executor.claims, registry.admit_run
    taken = claimed_by_passes(gateway, monkeypatch)

    slots = claims.max_concurrent

    async def no_slot_meanwhile(*args: Any, **kwargs: Any) -> Any:
        admitted = await admit(*args, **kwargs)
        claims.max_concurrent = 0
        return admitted

    monkeypatch.setattr(registry, "admit_run", no_slot_meanwhile)
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}))
    stored = await registry.get_run(run.run_id)
    assert stored is not None and stored.lease_owner is None
    claims.max_concurrent = slots
    claims.wake()
    ended = await executor.wait(run.run_id, limit=60)
    assert ended.status is RunStatus.SUCCESS and taken == [run.run_id]


async def test_a_run_whose_lease_lapsed_as_it_was_admitted_waits_for_a_claim(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admission that outlasted its lease (a busy pool) launches nothing: another
    executor may hold the run by then. Its lease goes back and a claim takes it."""
    executor, registry = gateway.executor, gateway.manager.registry
    admit = registry.admit_run
    taken = claimed_by_passes(gateway, monkeypatch)

    async def outlasting_its_lease(*args: Any, **kwargs: Any) -> Any:
        record, busy = await admit(*args, **kwargs)
        lapsed = clock.now() - timedelta(seconds=1)  # as the executor sees it
        return dataclasses.replace(record, lease_expires_at=lapsed), busy

    monkeypatch.setattr(registry, "admit_run", outlasting_its_lease)
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}))
    ended = await executor.wait(run.run_id, limit=60)
    assert ended.status is RunStatus.SUCCESS and taken == [run.run_id]
    assert executor.claims._admitting == 0


async def test_a_run_admitted_here_is_cancelled_at_once(gateway: Gateway) -> None:
    executor = gateway.executor
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.5}))

    async def executing() -> bool:
        return executor.is_active(run.run_id)

    await until(executing)
    cancelled = await gateway.cancel_run(run.run_id)
    assert cancelled.status is RunStatus.CANCELLED
    assert cancelled.lease_owner is None
    stored = await gateway.manager.registry.get_run(run.run_id)
    assert stored is not None and stored.status is RunStatus.CANCELLED


async def test_an_executor_hears_its_own_admission_news_as_no_news(gateway: Gateway) -> None:
    """ "runs OWNER" (a run admitted for a claim pass, the owner's loop woken already)
    wakes every claimer but that owner's; a bare "runs" (a freed thread, an earlier
    version's news) wakes every one. (As the bus hands a message to its handlers.)"""
    claims = gateway.executor.claims
    claims._wake.clear()
    claims._on_control(f"runs {claims.owner}")
    assert not claims._wake.is_set()
    claims._on_control("runs executor-elsewhere")
    assert claims._wake.is_set()
    claims._wake.clear()
    claims._on_control("runs")
    assert claims._wake.is_set()


async def test_two_starts_on_one_thread_admitted_out_of_order_run_one_at_a_time(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two starts on one idle thread whose admissions reach the thread's lock in the
    other order than they were asked for (a connection handed out later, another
    replica's clock): the one admitted first is leased and launched; the one asked
    for first, admitted second, is stamped after it (under the thread's lock) and
    queued behind it. Once (before admissions were stamped in their order) it was the
    older by created_at, queued unleased yet the oldest unfinished run of its thread,
    and a claim pass took it at once: both executed at the same time on one thread."""
    thread_id = await idle_thread(gateway)
    registry = gateway.manager.registry
    admit = registry.admit_run
    first_in, second_done, first_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    held: list[str] = []

    async def first_admitted_last(run: RunRecord, **kwargs: Any) -> Any:
        # Both admissions are committed before either start goes on: no claim pass
        # comes between them.
        if not held:
            held.append(run.run_id)
            first_in.set()
            await second_done.wait()
            try:
                return await admit(run, **kwargs)
            finally:
                first_done.set()
        admitted = await admit(run, **kwargs)
        second_done.set()
        await first_done.wait()
        return admitted

    monkeypatch.setattr(registry, "admit_run", first_admitted_last)
    start = StartRun(
        graph="slow",
        thread_id=thread_id,
        input={"delay": 0.5},
        multitask=MultitaskStrategy.ENQUEUE,
    )
    earlier = asyncio.create_task(gateway.start_run(start))
    await first_in.wait()
    later = await gateway.start_run(start)
    early = await earlier
    assert early.created_at is not None and later.created_at is not None
    assert later.created_at < early.created_at, "stamped in the order admitted"
    ends = [
        await gateway.executor.wait(run_id, limit=60) for run_id in (early.run_id, later.run_id)
    ]
    assert [e.status for e in ends] == [RunStatus.SUCCESS, RunStatus.SUCCESS]
    a, b = ends
    assert a.started_at and a.finished_at and b.started_at and b.finished_at
    assert a.started_at >= b.finished_at or b.started_at >= a.finished_at, (
        "one run of a thread at a time"
    )


async def test_a_run_admitted_leased_as_a_pass_claims_keeps_max_concurrent(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slot. A claim pass counted it free and is claiming a queued run; meanwhile a
    start finds the slot free too (the pass keeps none), is admitted leased and
    launched; the pass then launches what it claimed: two runs in one slot."""
    executor, registry = gateway.executor, gateway.manager.registry
    claims = executor.claims
    claims.max_concurrent = 0  # the first run is admitted unleased: a claim pass's
    queued = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.5}))
    assert queued.lease_owner is None
    claim, claimed, started = registry.claim_runs, asyncio.Event(), asyncio.Event()

    async def claim_as_a_start_comes(*args: Any, **kwargs: Any) -> list[RunRecord]:
        runs = await claim(*args, **kwargs)
        if runs:
            claimed.set()
            await started.wait()
        return runs

    monkeypatch.setattr(registry, "claim_runs", claim_as_a_start_comes)
    claims.max_concurrent = 1
    claims.wake()
    await claimed.wait()
    other = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.5}))
    started.set()
    a = await executor.wait(queued.run_id, limit=60)
    b = await executor.wait(other.run_id, limit=60)
    assert [a.status, b.status] == [RunStatus.SUCCESS, RunStatus.SUCCESS]
    assert a.started_at and a.finished_at and b.started_at and b.finished_at
    assert a.started_at >= b.finished_at or b.started_at >= a.finished_at, (
        "at most max_concurrent runs execute at once"
    )


async def test_a_start_takes_no_freed_slot_ahead_of_runs_queued_for_one(
    gateway: Gateway,
) -> None:
    """The last pass left a run (of another thread) waiting for want of a slot: a start
    when a slot frees is admitted unleased and claimed in order, not launched ahead of
    it (else, under saturation, queued runs could starve)."""
    executor = gateway.executor
    claims = executor.claims
    claims.max_concurrent = 1
    first = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.3}))
    assert first.lease_owner == executor.owner
    queued = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}))
    assert queued.lease_owner is None

    async def full() -> bool:
        return claims._full

    await until(full)  # a pass found no slot for it
    async with claims._claiming:  # no pass until the start below is admitted

        async def slot_freed() -> bool:
            return not executor.is_active(first.run_id)

        await until(slot_freed)
        later = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}))
        assert later.lease_owner is None, "admitted behind the queued run"
    ends = [await executor.wait(r.run_id, limit=60) for r in (queued, later)]
    assert [e.status for e in ends] == [RunStatus.SUCCESS, RunStatus.SUCCESS]
    assert ends[0].started_at and ends[1].started_at
    assert ends[0].started_at <= ends[1].started_at, "the queued run first"


async def test_a_run_whose_lease_is_nearly_lapsed_as_it_is_admitted_waits_for_a_claim(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Less than half its lease left when the admission returns (a busy pool): not
    launched as is (renewed only at the next renewal tick, another executor could claim
    it meanwhile) but handed to a claim, which leases it afresh."""
    executor, registry = gateway.executor, gateway.manager.registry
    admit, lease = registry.admit_run, executor.claims.lease
    taken = claimed_by_passes(gateway, monkeypatch)

    async def most_of_its_lease_gone(*args: Any, **kwargs: Any) -> Any:
        record, busy = await admit(*args, **kwargs)
        nearly = clock.now() + lease * 0.4  # as the executor sees it
        return dataclasses.replace(record, lease_expires_at=nearly), busy

    monkeypatch.setattr(registry, "admit_run", most_of_its_lease_gone)
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}))
    ended = await executor.wait(run.run_id, limit=60)
    assert ended.status is RunStatus.SUCCESS and taken == [run.run_id]
    assert executor.claims._admitting == 0


async def test_a_pass_with_every_slot_busy_and_no_run_waiting_keeps_the_fast_path(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass (a timer's) while every slot is busy and no run waits: the start after
    the slot frees is admitted leased, no claim (it was left to a claim pass, and under
    load each pass that took every slot left the next start to a pass again)."""
    executor = gateway.executor
    claims = executor.claims
    claims.max_concurrent = 1
    taken = claimed_by_passes(gateway, monkeypatch)
    first = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.3}))
    assert first.lease_owner == executor.owner
    await claims.claim_once()
    assert not claims._full, "no run waits for the slot"
    await executor.wait(first.run_id, limit=60)
    later = await start_with_the_slot_free(gateway, first.run_id)
    assert later.lease_owner == executor.owner, "admitted leased: no claim"
    assert (await executor.wait(later.run_id, limit=60)).status is RunStatus.SUCCESS
    assert taken == []


async def test_a_pass_that_takes_every_slot_leaves_the_next_start_its_fast_path(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = gateway.executor
    claims = executor.claims
    claims.max_concurrent = 0
    queued = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}))
    assert queued.lease_owner is None
    taken = claimed_by_passes(gateway, monkeypatch)
    claims.max_concurrent = 1
    await claims.claim_once()
    assert taken == [queued.run_id]
    assert not claims._full, "it took the one run that waited"
    await executor.wait(queued.run_id, limit=60)
    later = await start_with_the_slot_free(gateway, queued.run_id)
    assert later.lease_owner == executor.owner, "admitted leased: no claim"
    assert (await executor.wait(later.run_id, limit=60)).status is RunStatus.SUCCESS
    assert taken == [queued.run_id]


async def test_a_pass_with_every_slot_busy_finds_a_run_waiting_unannounced(
    gateway: Gateway,
) -> None:
    """A run waits that no message told of (admitted by another replica whose news was
    lost, or one whose lease lapsed): the registry says so, and the freed slot is the
    waiting run's, through a claim, not a new start's."""
    executor, registry = gateway.executor, gateway.manager.registry
    claims = executor.claims
    claims.max_concurrent = 1
    first = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.3}))
    assert first.lease_owner == executor.owner
    waiting, _ = await registry.admit_run(
        RunRecord(
            run_id="run-elsewhere",
            thread_id="thread-elsewhere",
            graph="slow",
            status=RunStatus.PENDING,
            input={"delay": 0},
        ),
        reject_if_busy=True,
    )
    assert waiting is not None and claims._queued == 0  # no news of it here
    async with claims._claiming:  # no pass but the one below until the start is admitted
        await claims._claim_locked(cancels=False)
        assert claims._full, "the registry has a run waiting for the slot"

        async def slot_freed() -> bool:
            return not executor.is_active(first.run_id)

        await until(slot_freed)
        later = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}))
        assert later.lease_owner is None, "admitted behind the waiting run"
    ends = [await executor.wait(r, limit=60) for r in (waiting.run_id, later.run_id)]
    assert [e.status for e in ends] == [RunStatus.SUCCESS, RunStatus.SUCCESS]
