"""A deletion in steps against a startRun on the same thread id, on memory, SQLite and
PostgreSQL: the mark is the deletion's own (a run acknowledged after it is never deleted
by it), and its last step leaves a thread made anew under the id alone.

The steps (`ThreadAdmin._purge`): mark the row (`start_deletion`), stop the runs, then
`end_deletion`. Each test holds one deletion at a step with an event and lets another
client start a run on the thread id meanwhile; its startRun reaps the marked thread
(it looks expired), so the run starts on a thread made anew.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from code_hero.gateway import Gateway
from code_hero.persistence import clock
from code_hero.persistence.manager import ThreadDeletion
from code_hero.persistence.records import RunRecord, RunStatus
from code_hero.runs.executor import MultitaskStrategy, StartRun
from tests.runs.test_deletes import first_checkpoint, wait_status


async def _deletion_held_at(
    gw: Gateway,
    monkeypatch: pytest.MonkeyPatch,
    thread_id: str,
    owner: object,
    step: str,
    *,
    after: bool,
) -> tuple[asyncio.Task[ThreadDeletion], asyncio.Event]:
    """A deletion of the thread whose first call of `owner.step` stops (before or after
    the call itself) until the event returned with its task is set; later calls (the
    reap's own deletion) pass straight through. Returns once the deletion stopped."""
    call: Callable[..., Awaitable[Any]] = getattr(owner, step)
    reached, go = asyncio.Event(), asyncio.Event()
    first = True

    async def held(*args: Any, **kw: Any) -> Any:
        nonlocal first
        if not first:
            return await call(*args, **kw)
        first = False
        if not after:
            reached.set()
            await go.wait()
        done = await call(*args, **kw)
        if after:
            reached.set()
            await go.wait()
        return done

    monkeypatch.setattr(owner, step, held)
    deletion = asyncio.create_task(gw.delete_thread(thread_id))
    await reached.wait()
    return deletion, go


async def _busy_thread(gw: Gateway) -> RunRecord:
    """A thread with a run in flight that has written: every store deletes it in steps."""
    run = await gw.start_run(StartRun(graph="slow", input={"delay": 30}))
    await wait_status(gw, run.run_id, RunStatus.RUNNING)
    await first_checkpoint(gw, run.thread_id)
    return run


async def _start_anew(gw: Gateway, thread_id: str) -> RunRecord:
    """Another client's startRun on the id, to its end (its checkpoints written)."""
    again = StartRun(thread_id=thread_id, graph="slow", input={"delay": 0}, wait=True)
    run = await gw.start_run(again)
    assert run.status is RunStatus.SUCCESS
    return run


async def _assert_kept(gw: Gateway, old: RunRecord, new: RunRecord) -> None:
    """The thread made anew and its acknowledged run are whole; the old run is gone."""
    assert new.run_id != old.run_id
    assert await gw.get_run(new.run_id) is not None
    thread = await gw.get_thread(new.thread_id)
    assert thread is not None and thread.status.value == "IDLE"
    assert await gw.get_checkpoint(new.thread_id) is not None
    assert await gw.get_run(old.run_id) is None


async def test_the_last_step_leaves_a_thread_made_anew_alone(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deletion A has marked the thread and stopped its runs; before its last step a
    startRun reaps the thread (ending the deletion itself) and starts on it anew. A's
    last step used to delete by id alone: the new thread, its acknowledged run and its
    checkpoints went. It deletes only a row still marked, and no live row's checkpoints."""
    old = await _busy_thread(gateway)
    router = gateway.manager.router
    deletion, go = await _deletion_held_at(  # A's last step is next
        gateway, monkeypatch, old.thread_id, router, "delete_thread", after=False
    )
    assert not gateway.executor.is_active(old.run_id)  # stopped

    new = await _start_anew(gateway, old.thread_id)
    go.set()
    gone: ThreadDeletion = await deletion

    # The reap (a deletion that joined A's mark) deleted the thread A was asked to; the
    # one made anew since is another, left alone.
    assert gone.deleted and (gone.checkpoints_deleted, gone.runs_deleted) == (0, 0)
    await _assert_kept(gateway, old, new)


async def test_a_start_ends_a_marked_thread_whatever_its_clock_reads(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion marked the thread and has not ended. A startRun whose clock reads
    before the row's last write (a write stamped after it took its now, such as the
    stopped run's end; a replica behind within the clock offset's tolerance; a wall
    clock stepped back) took the row for live, not expired, and answered CONFLICT
    instead of ending the deletion (CI, once). A marked row expired at the epoch."""
    old = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
    assert await gateway.manager.start_deletion(old.thread_id) is not None
    real = clock.wall
    monkeypatch.setattr(clock, "wall", lambda: real() - timedelta(seconds=5))

    new = await _start_anew(gateway, old.thread_id)

    await _assert_kept(gateway, old, new)


async def test_a_run_started_while_the_runs_stop_is_not_deleted(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deletion A has stopped the thread's runs; a startRun on the thread then was
    admitted onto it (the row was marked only after the stop) and acknowledged, and A
    deleted it with the thread. The mark now comes before the stop: the admission
    finds it, so the run starts on a thread made anew, which A leaves alone."""
    old = await _busy_thread(gateway)
    deletion, go = await _deletion_held_at(  # A has stopped the runs: its last step is next
        gateway, monkeypatch, old.thread_id, gateway.executor, "stop_thread", after=True
    )

    new = await _start_anew(gateway, old.thread_id)
    go.set()
    await deletion

    await _assert_kept(gateway, old, new)


async def test_a_run_admitted_before_the_stop_goes_with_the_thread(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the mark decides, the other way: a run admitted before the deletion marked the
    thread is the deletion's, stopped and deleted with it; none after the mark is."""
    old = await _busy_thread(gateway)
    deletion, go = await _deletion_held_at(  # the mark is next
        gateway, monkeypatch, old.thread_id, gateway.manager.registry, "start_deletion", after=False
    )
    queued = await gateway.start_run(
        StartRun(
            thread_id=old.thread_id, graph="slow", input={}, multitask=MultitaskStrategy.ENQUEUE
        )
    )
    go.set()
    gone = await deletion

    assert gone.deleted and gone.runs_deleted == 2
    assert await gateway.get_run(queued.run_id) is None
    assert not gateway.executor.is_active(queued.run_id)
    assert await gateway.get_thread(old.thread_id) is None


async def test_a_deletion_leaves_a_thread_another_deletion_marked_to_it(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deletion A has marked the thread and stopped its runs; before its last step a
    startRun reaps the thread and a run starts on it anew, and deletion D marks that
    thread. A's last step took any marked row: the new thread's checkpoints, row and
    run went before D's stop looked for runs, so the run was never stopped and went on
    writing under the id. The mark carries its deletion's token: A leaves D's thread."""
    old = await _busy_thread(gateway)
    manager, executor = gateway.manager, gateway.executor
    first, a_go = await _deletion_held_at(  # A has marked the thread and stopped its runs
        gateway, monkeypatch, old.thread_id, manager, "end_deletion", after=False
    )
    anew = await gateway.start_run(
        StartRun(thread_id=old.thread_id, graph="slow", input={"delay": 30})
    )  # the reap ended A's thread; this run starts on one made anew
    await wait_status(gateway, anew.run_id, RunStatus.RUNNING)

    second, d_go = await _deletion_held_at(  # D has marked the new thread: its stop is next
        gateway, monkeypatch, old.thread_id, executor, "stop_thread", after=False
    )
    a_go.set()
    ended = await first  # the reap ended A's thread; D's is not A's
    assert ended.deleted and (ended.checkpoints_deleted, ended.runs_deleted) == (0, 0)
    d_go.set()
    gone: ThreadDeletion = await second

    assert gone.deleted and gone.runs_deleted == 1
    assert not executor.is_active(anew.run_id)  # stopped: it writes nothing more
    assert await gateway.get_run(anew.run_id) is None
    assert await gateway.get_checkpoint(old.thread_id) is None


@pytest.mark.parametrize("ends_it", ["the one that joined", "the one that marked"])
async def test_two_deletions_of_one_mark_both_answer_deleted(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, ends_it: str
) -> None:
    """Deletion A marks a busy thread and deletion B joins its mark (the same token); one
    of them ends it, and the other's last step finds nothing left. That one answered
    `deleted: false`, which the contract keeps for a thread that never existed, though the
    thread it was asked to delete existed (it had a row to mark) and is gone. Both answer
    true; the counts stay each one's own (a retry is told nothing was deleted twice)."""
    old = await _busy_thread(gateway)
    registry = gateway.manager.registry
    marker, a_go = await _deletion_held_at(  # A has marked the thread: its stop is next
        gateway, monkeypatch, old.thread_id, registry, "start_deletion", after=True
    )
    joiner, b_go = await _deletion_held_at(  # B has joined A's mark (the thread busy still)
        gateway, monkeypatch, old.thread_id, registry, "start_deletion", after=True
    )
    first, last = (b_go, a_go) if ends_it == "the one that joined" else (a_go, b_go)
    ender, other = (joiner, marker) if ends_it == "the one that joined" else (marker, joiner)
    first.set()
    ended = await ender
    last.set()
    after: ThreadDeletion = await other

    assert ended.deleted and ended.runs_deleted == 1 and ended.checkpoints_deleted > 0
    assert after.deleted and (after.checkpoints_deleted, after.runs_deleted) == (0, 0)
    assert await gateway.get_thread(old.thread_id) is None
    assert await gateway.get_run(old.run_id) is None
    assert await gateway.get_checkpoint(old.thread_id) is None
    # A thread that never existed is not deleted, on every store (memory's in steps).
    assert not (await gateway.delete_thread(str(uuid.uuid4()))).deleted
