"""Deletes are final, on memory, SQLite and PostgreSQL: no run outlives its thread's
deletion, and nothing a run writes afterwards brings the thread back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from code_hero.auth import Caller
from code_hero.config import CheckpointerConfig
from code_hero.errors import ConflictError, ForbiddenError, ThreadBeingDeletedError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunFilter, RunRecord, RunStatus
from code_hero.runs.executor import MultitaskStrategy, StartRun
from code_hero.runs.waits import Waits
from tests.faults import held_writes
from tests.runs.conftest import SLOW_SPEC


async def wait_status(gw: Gateway, run_id: str, status: RunStatus, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        run = await gw.get_run(run_id)
        if run is not None and run.status is status:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never reached {status}")


async def running_and_queued(
    gw: Gateway, *, queued: int = 1, delay: float = 30
) -> tuple[RunRecord, list[RunRecord]]:
    """A run executing on a new thread (each node `delay` s), and `queued` runs queued
    behind it."""
    first = await gw.start_run(StartRun(graph="slow", input={"delay": delay}))
    behind = [
        await gw.start_run(
            StartRun(
                graph="slow",
                thread_id=first.thread_id,
                input={},
                multitask=MultitaskStrategy.ENQUEUE,
            )
        )
        for _ in range(queued)
    ]
    await wait_status(gw, first.run_id, RunStatus.RUNNING)
    return first, behind


async def first_checkpoint(gw: Gateway, thread_id: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while await gw.get_checkpoint(thread_id) is None:
        assert time.monotonic() < deadline, f"thread {thread_id} never wrote a checkpoint"
        await asyncio.sleep(0.02)


async def assert_gone(gw: Gateway, thread_id: str, run_ids: list[str]) -> None:
    """No thread row, no run, no event, no checkpoint of the thread remains."""
    registry = gw.manager.registry
    assert await gw.get_thread(thread_id) is None
    assert (await registry.list_runs(RunFilter(thread_id=thread_id), first=1000)).items == []
    assert await registry.get_runs(run_ids) == {}
    for run_id in run_ids:
        assert await registry.list_events(run_id) == []
    assert await gw.manager.router.count_checkpoints(thread_id) == 0
    assert await gw.get_checkpoint(thread_id) is None


async def test_a_run_cut_short_by_the_delete_writes_nothing_back(gateway: Gateway) -> None:
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.3}))
    await wait_status(gateway, run.run_id, RunStatus.RUNNING)
    await first_checkpoint(gateway, run.thread_id)  # mid-run: it has written

    gone = await gateway.delete_thread(run.thread_id)

    assert gone.deleted and gone.runs_deleted == 1
    assert not gateway.executor.is_active(run.run_id)  # ended before the purge
    await gateway.events.flush()  # whatever its end emitted has been stored (or dropped)
    await assert_gone(gateway, run.thread_id, [run.run_id])


async def test_a_run_ending_after_the_purge_writes_nothing_back(gateway: Gateway) -> None:
    """`manager.purge_thread` (what `code-hero threads delete` calls) does not stop the
    run: it goes on writing checkpoints and events, and ends after the purge."""
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.3}))
    await first_checkpoint(gateway, run.thread_id)

    await gateway.manager.purge_thread(run.thread_id)
    assert gateway.executor.is_active(run.run_id)  # still writing
    deadline = time.monotonic() + 60
    while gateway.executor.is_active(run.run_id):  # to its last step and its end
        assert time.monotonic() < deadline, "the run never ended"
        await asyncio.sleep(0.05)

    await gateway.events.flush()
    await assert_gone(gateway, run.thread_id, [run.run_id])


async def test_every_queued_run_goes_with_its_thread(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The running one waits at its first checkpoint while 149 runs are queued behind it:
    # on a loaded machine queueing them outlasted its six steps (2 s each), and it ended.
    _, go_on = held_writes(monkeypatch, gateway.manager.router)
    first, queued = await running_and_queued(gateway, queued=149, delay=2)
    unfinished = await gateway.manager.registry.unfinished_runs(first.thread_id)
    assert len(unfinished) == 150  # the oldest one is past the newest 100
    go_on.set()

    await gateway.delete_thread(first.thread_id)

    # The running one was stopped, not left to finish after the purge.
    assert not gateway.executor.is_active(first.run_id)
    assert await gateway.executor.recover() == 0  # nothing of the thread is claimable
    await gateway.events.flush()
    await assert_gone(gateway, first.thread_id, [first.run_id, *(r.run_id for r in queued)])


async def test_prune_stops_the_runs_of_the_threads_it_deletes(gateway: Gateway) -> None:
    first = await gateway.start_run(StartRun(graph="slow", input={"delay": 2}))
    queued = await gateway.start_run(
        StartRun(
            graph="slow", thread_id=first.thread_id, multitask=MultitaskStrategy.ENQUEUE, input={}
        )
    )
    await wait_status(gateway, first.run_id, RunStatus.RUNNING)
    with pytest.raises(ForbiddenError):  # administrators only: nothing goes
        await gateway.prune(older_than=datetime.now(UTC), caller=Caller(user_id="ada"))
    assert await gateway.get_thread(first.thread_id) is not None

    report = await gateway.prune(older_than=datetime.now(UTC))

    assert (report.threads_deleted, report.runs_deleted) == (1, 2)
    assert not gateway.executor.is_active(first.run_id)  # stopped, not left to run on
    assert await gateway.executor.recover() == 0
    await gateway.events.flush()
    await assert_gone(gateway, first.thread_id, [first.run_id, queued.run_id])


class _State(TypedDict, total=False):
    n: int


def _counter() -> Any:
    builder = StateGraph(_State)
    builder.add_node("step", lambda state: {"n": state.get("n", 0) + 1})
    builder.add_edge(START, "step")
    builder.add_edge("step", END)
    return builder


async def test_a_runs_late_checkpoint_creates_no_thread_but_a_plain_one_does(
    gateway: Gateway,
) -> None:
    """A registry run's checkpoint only bumps its thread's row (so a run that ends after
    the delete cannot bring the thread back); the seed's plain ainvoke creates the row."""
    graph = _counter().compile(checkpointer=gateway.manager.get_checkpointer())
    late = {"configurable": {"thread_id": "deleted-meanwhile", "run_id": "r-late"}}
    await graph.ainvoke({"n": 0}, late)
    assert await gateway.get_thread("deleted-meanwhile") is None

    plain = {"configurable": {"thread_id": "seed-thread"}}
    await graph.ainvoke({"n": 0}, plain)
    threads = await gateway.manager.list_threads(limit=10)
    assert [t["thread_id"] for t in threads] == ["seed-thread"]


async def test_queued_runs_start_as_the_previous_one_ends(
    backend_config: CheckpointerConfig,
) -> None:
    """ENQUEUE admissions racing the end of the run before them: each queued run is woken
    by that end, never by the claimers' poll (here 200 s, beyond the bounded wait)."""
    settings = GatewaySettings(
        checkpointer=backend_config, graphs={"slow": SLOW_SPEC}, lease_seconds=600
    )
    async with Gateway(settings) as gw:
        first = await gw.start_run(StartRun(graph="slow", input={"delay": 0.01}))
        runs = [first]
        for _ in range(8):  # each admitted while the one before is finishing or done
            runs.append(
                await gw.start_run(
                    StartRun(
                        graph="slow",
                        thread_id=first.thread_id,
                        input={"delay": 0.01},
                        multitask=MultitaskStrategy.ENQUEUE,
                    )
                )
            )
            await asyncio.sleep(0.03)
        ended = [await gw.executor.wait(r.run_id, limit=60) for r in runs]
        assert [r.status for r in ended] == [RunStatus.SUCCESS] * len(runs)


async def test_an_idle_thread_goes_in_one_step_where_the_store_has_one(
    gateway: Gateway, backend_config: CheckpointerConfig
) -> None:
    """PostgreSQL and SQLite delete a thread with no run in flight in one step (issue 15:
    one statement, one call on SQLite's thread); a thread with one is left for the
    two-step path, which stops the run first."""
    done = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}))
    await wait_status(gateway, done.run_id, RunStatus.SUCCESS)
    busy = await gateway.start_run(StartRun(graph="slow", input={"delay": 2}))
    await wait_status(gateway, busy.run_id, RunStatus.RUNNING)
    await first_checkpoint(gateway, busy.thread_id)
    manager = gateway.manager
    stored = await manager.router.count_checkpoints(done.thread_id)

    # A run in flight: nothing deleted, whatever the store (busy, or no one step).
    one_step = not str(backend_config.checkpointer_type).endswith("memory")
    left = await manager.purge_idle_thread(busy.thread_id)
    assert left is None or (left.busy and not left.deleted)
    assert await gateway.get_thread(busy.thread_id) is not None
    assert gateway.executor.is_active(busy.run_id)
    if one_step:
        # Busy means "deletable once its runs stop": never for another user's thread.
        other = await manager.router.purge_idle_thread(busy.thread_id, None, "someone-else")
        assert other is not None and other.foreign and not other.busy
        assert gateway.executor.is_active(busy.run_id)

    gone = await manager.purge_idle_thread(done.thread_id)
    if one_step:
        assert gone is not None and gone.deleted
        assert (gone.checkpoints_deleted, gone.runs_deleted) == (stored, 1)
        await assert_gone(gateway, done.thread_id, [done.run_id])
        # Gone already: a second deletion finds nothing.
        again = await manager.purge_idle_thread(done.thread_id)
        assert again is not None and not again.deleted
    else:
        assert gone is None  # no one-step deletion: the caller takes the two steps
        assert await gateway.get_thread(done.thread_id) is not None

    deleted = await gateway.delete_thread(busy.thread_id)
    assert deleted.deleted and deleted.runs_deleted == 1
    assert not gateway.executor.is_active(busy.run_id)
    await gateway.events.flush()
    await assert_gone(gateway, busy.thread_id, [busy.run_id])


async def expire(gateway: Gateway, thread_id: str) -> None:
    """Give the thread a ttl of 60 s and make its row two minutes old: expired."""
    registry = gateway.manager.registry
    await registry.update_thread(thread_id, metadata=None, ttl_seconds=60, set_ttl=True)
    record = await registry.get_thread(thread_id)
    assert record is not None
    then = datetime.now(UTC) - timedelta(minutes=2)
    await registry.put_thread(replace(record, created_at=then, updated_at=then))


async def test_an_expired_thread_is_not_an_administrators_to_delete(gateway: Gateway) -> None:
    """deleteThread finds no expired thread (the sweep's to delete), on every store,
    though the expiry check is part of PostgreSQL's one-step deletion."""
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}))
    await wait_status(gateway, run.run_id, RunStatus.SUCCESS)
    await expire(gateway, run.thread_id)

    gone = await gateway.delete_thread(run.thread_id)

    assert not gone.deleted
    assert await gateway.manager.router.count_checkpoints(run.thread_id) > 0  # still stored
    assert await gateway.sweep_expired() == [run.thread_id]
    await assert_gone(gateway, run.thread_id, [run.run_id])


async def test_the_owners_delete_thread_ends_a_deletion_cut_short(gateway: Gateway) -> None:
    """A deletion cut short (an outage, a crash) leaves the thread's row marked, hidden
    from reads; the owner's deleteThread again ends it. On the memory store (a deletion
    in steps) the owner check read the thread as reads do, found none, and deleted
    nothing."""
    ada = Caller(user_id="ada")
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True), caller=ada)
    assert await gateway.manager.registry.start_deletion(run.thread_id)  # then cut short

    gone = await gateway.delete_thread(run.thread_id, caller=ada)

    assert gone.deleted and gone.runs_deleted == 1
    await assert_gone(gateway, run.thread_id, [run.run_id])


async def test_a_deletion_cut_short_is_not_another_users_to_end(gateway: Gateway) -> None:
    """The marked row is read for its owner: another user's deleteThread deletes nothing."""
    run = await gateway.start_run(
        StartRun(graph="slow", input={"delay": 0}, wait=True), caller=Caller(user_id="ada")
    )
    assert await gateway.manager.registry.start_deletion(run.thread_id)

    gone = await gateway.delete_thread(run.thread_id, caller=Caller(user_id="bob"))

    assert not gone.deleted
    assert await gateway.manager.registry.get_run(run.run_id) is not None


async def test_a_run_started_on_a_thread_whose_deletion_was_cut_short_is_not_deleted_later(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion cut short by an outage leaves the thread's row marked (a ttl of 0),
    hidden; a startRun naming it reaps it first, so its run starts on a fresh thread.
    When the reap looked during the outage (no thread is known expired then) and the
    admission came once the primary served, the run was admitted onto the marked row,
    which stayed marked: the next reap or sweep stopped the acknowledged run and
    deleted it with the thread (chaos seed 143). Now the admission finds the mark and
    the deletion is ended first."""
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
    registry = gateway.manager.registry
    assert await registry.start_deletion(run.thread_id)  # then the outage cut it short
    looked = registry.expired_thread_ids

    async def during_the_outage(*args: Any, **kw: Any) -> list[str]:
        monkeypatch.setattr(registry, "expired_thread_ids", looked)  # back after this look
        return []

    monkeypatch.setattr(registry, "expired_thread_ids", during_the_outage)
    again = StartRun(thread_id=run.thread_id, graph="slow", input={"delay": 0}, wait=True)
    started = await gateway.start_run(again)
    monkeypatch.setattr(registry, "expired_thread_ids", looked)
    assert started.status is RunStatus.SUCCESS

    await gateway.sweep_expired()

    assert await gateway.get_run(started.run_id) is not None
    thread = await gateway.get_thread(run.thread_id)
    assert thread is not None and thread.status.value == "IDLE"
    assert await gateway.get_run(run.run_id) is None  # the deletion was ended first


async def test_a_run_refused_on_a_marked_thread_does_not_delete_the_thread_made_anew(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A startRun refused on a thread a deletion had marked ended that deletion itself,
    unconditionally: when the deletion ended first and another client made the thread
    anew meanwhile, it deleted that thread and its acknowledged run. It looks again
    now: no longer marked, it answers CONFLICT (retry) and deletes nothing."""
    first = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
    thread_id = first.thread_id
    start = gateway.executor.start
    made_anew: list[RunRecord] = []

    async def refused_as_the_thread_is_made_anew(
        request: StartRun, waits: Waits | None = None
    ) -> RunRecord:
        monkeypatch.setattr(gateway.executor, "start", start)
        assert (await gateway.delete_thread(thread_id)).deleted  # the deletion ends
        again = StartRun(thread_id=thread_id, graph="slow", input={"delay": 0}, wait=True)
        made_anew.append(await gateway.start_run(again))  # another client's new thread
        raise ThreadBeingDeletedError(f"thread {thread_id!r} is being deleted", retry_after=1)

    monkeypatch.setattr(gateway.executor, "start", refused_as_the_thread_is_made_anew)
    with pytest.raises(ConflictError):
        await gateway.start_run(StartRun(thread_id=thread_id, graph="slow", input={"delay": 0}))
    (other,) = made_anew
    assert await gateway.get_run(other.run_id) is not None
    assert await gateway.get_thread(thread_id) is not None


async def test_leftovers_of_an_expired_thread_are_kept_when_purged_in_steps(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's end that finds its thread's row hidden purges what it wrote after a
    deletion; in two steps (an outage) it looked for the row as reads do, which hide
    an expired row, and deleted the checkpoints of a thread that still has one (whose
    runs may go on elsewhere; the sweep's to delete, whole)."""
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
    await expire(gateway, run.thread_id)
    # Gone, as with its thread: a run still there was taken over, its thread left alone.
    await gateway.manager.registry.delete_run(run.run_id)

    async def in_two_steps(thread_id: str) -> None:
        return None

    monkeypatch.setattr(gateway.manager.router, "purge_orphan", in_two_steps)
    await gateway.executor._purge_if_deleted(run.run_id, run.thread_id)

    assert await gateway.manager.router.count_checkpoints(run.thread_id) > 0
