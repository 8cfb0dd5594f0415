"""deleteThread (and the bulk deletions) against updateState on one thread, on SQLite and
PostgreSQL: a thread reported deleted keeps no row and no checkpoint.

Before, the edit's claim remade the row of a thread deleted since the edit found it,
and a deletion went ahead while an edit was between its claim and its write, which
then wrote a checkpoint onto the deleted thread. Now a deletion refuses to start while
an edit holds the thread (CONFLICT with retryAfter; the bulk deletions skip it), and an
edit whose thread's deletion has started is NOT_FOUND.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from code_hero.auth import ANONYMOUS
from code_hero.errors import CodeHeroError, ConflictError, NotFoundError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.checkpoints import CheckpointView
from code_hero.persistence.manager import ThreadDeletion
from code_hero.persistence.records import RunStatus, ThreadFilter, ThreadRecord, ThreadStatus
from code_hero.persistence.registry import edits as edit_registry
from code_hero.runs.executor import StartRun
from code_hero.runs.requests import UpdateState
from tests.conftest import make_config
from tests.faults import until
from tests.runs.conftest import SLOW_SPEC, idle_thread

PAIRS = 40


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def gw(request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        checkpointer=make_config(request.param, request), graphs={"slow": SLOW_SPEC}
    )
    async with Gateway(settings) as gateway:
        yield gateway


async def _edit(gw: Gateway, thread_id: str) -> CheckpointView | NotFoundError:
    try:
        return await gw.update_state(UpdateState(thread_id, {"steps": ["edited"]}))
    except NotFoundError as missing:
        return missing


async def _delete(gw: Gateway, thread_id: str, after: float) -> ThreadDeletion | ConflictError:
    await asyncio.sleep(after)  # spreads the deletions over the edit's course
    try:
        return await gw.delete_thread(thread_id)
    except ConflictError as refused:
        return refused


async def _left(gw: Gateway, thread_id: str) -> tuple[bool, bool]:
    """Whether the thread still has a registry row (expired or not), and a checkpoint."""
    rows = await gw.manager.registry.thread_ids()
    return thread_id in rows, await gw.manager.get_checkpoint(thread_id) is not None


async def test_a_thread_reported_deleted_keeps_nothing_whatever_an_edit_did(gw: Gateway) -> None:
    """(updateState, deleteThread) pairs, each deletion a little later into its edit: the
    deletion came first (the edit is NOT_FOUND), or the edit did (the deletion takes it
    too), or the deletion was refused while the edit held the thread (the edit is kept)."""
    half_alive = []
    for pair in range(PAIRS):
        thread_id = await idle_thread(gw)
        edit, gone = await asyncio.gather(
            _edit(gw, thread_id), _delete(gw, thread_id, 0.001 * (pair % 8))
        )
        row, checkpoint = await _left(gw, thread_id)
        if isinstance(gone, ConflictError):
            assert gone.retry_after == 1 and "being edited" in str(gone)
            assert isinstance(edit, CheckpointView) and row and checkpoint
            latest = await gw.manager.get_checkpoint(thread_id)
            assert latest is not None and latest.checkpoint_id == edit.checkpoint_id
        else:
            assert gone.deleted
            if row or checkpoint:
                half_alive.append((pair, type(edit).__name__, row, checkpoint))
    assert half_alive == []


async def test_an_edit_does_not_remake_the_thread_deleted_after_it_found_it(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = gw.manager.registry
    thread_id = await idle_thread(gw)
    claim = registry.claim_edit

    async def deleted_first(*args: Any, **kwargs: Any) -> str | None:
        assert (await gw.delete_thread(thread_id)).deleted
        return await claim(*args, **kwargs)

    monkeypatch.setattr(registry, "claim_edit", deleted_first)
    with pytest.raises(NotFoundError):
        await gw.update_state(UpdateState(thread_id, {"steps": ["edited"]}))
    assert await _left(gw, thread_id) == (False, False)


async def test_an_edit_takes_a_thread_whose_deletion_started_for_no_thread(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion that starts after the edit's access check hides the row while the
    checkpoints are still there: the edit must not take the thread for one only the
    savers hold and make its row anew once the deletion has ended."""
    registry = gw.manager.registry
    thread_id = await idle_thread(gw)
    get, claim = registry.get_thread, registry.claim_edit

    async def deletion_started_first(thread_id: str, **kwargs: Any) -> ThreadRecord | None:
        if not kwargs:  # the edit's first look
            assert await registry.start_deletion(thread_id)
        return await get(thread_id, **kwargs)

    async def deletion_ended_first(*args: Any, **kwargs: Any) -> str | None:
        await gw.manager.purge_thread(thread_id)
        return await claim(*args, **kwargs)

    monkeypatch.setattr(registry, "get_thread", deletion_started_first)
    monkeypatch.setattr(registry, "claim_edit", deletion_ended_first)
    with pytest.raises(CodeHeroError) as refused:
        await gw.update_state(UpdateState(thread_id, {"steps": ["edited"]}))
    monkeypatch.undo()
    assert await registry.get_thread(thread_id) is None  # not made anew
    assert isinstance(refused.value, NotFoundError)
    await gw.manager.purge_thread(thread_id)  # the deletion ends (when the edit did not)
    assert await _left(gw, thread_id) == (False, False)


async def test_a_deletion_waits_for_an_edit_between_its_claim_and_its_write(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = gw.manager.registry
    thread_id = await idle_thread(gw)
    claim = registry.claim_edit
    refused: list[BaseException] = []

    async def then_deleted(*args: Any, **kwargs: Any) -> str | None:
        busy = await claim(*args, **kwargs)
        with pytest.raises(ConflictError) as caught:
            await gw.delete_thread(thread_id)
        refused.append(caught.value)
        return busy

    monkeypatch.setattr(registry, "claim_edit", then_deleted)
    view = await gw.update_state(UpdateState(thread_id, {"steps": ["edited"]}))
    assert len(refused) == 1 and getattr(refused[0], "retry_after", None) == 1
    assert await _left(gw, thread_id) == (True, True)
    latest = await gw.manager.get_checkpoint(thread_id)
    assert latest is not None and latest.checkpoint_id == view.checkpoint_id
    monkeypatch.undo()
    assert (await gw.delete_thread(thread_id)).deleted  # the edit over, the deletion goes
    assert await _left(gw, thread_id) == (False, False)


async def test_an_edit_claimed_while_a_deletion_stops_the_runs_finds_the_thread_gone(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread with a run in flight is deleted in steps everywhere (PostgreSQL's busy
    path). The deletion marks the row before it stops the runs: an edit that claims the
    thread once the run has stopped finds it gone (NOT_FOUND), and the deletion goes on
    (an edit claimed before the mark keeps the deletion out: the tests above)."""
    registry = gw.manager.registry
    thread_id = await idle_thread(gw)
    going = await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={"delay": 5}))

    async def running() -> bool:  # executing here: its stop is waited for
        run = await gw.get_run(going.run_id)
        return run is not None and run.status is RunStatus.RUNNING

    await until(running)
    stop = gw.services.executor.stop_thread
    held = datetime.now(UTC) + timedelta(minutes=1)

    async def then_edited(thread_id: str) -> None:
        await stop(thread_id)
        with pytest.raises(NotFoundError):
            await registry.claim_edit(thread_id, held, seen=True)

    monkeypatch.setattr(gw.services.executor, "stop_thread", then_edited)
    gone = await gw.delete_thread(thread_id)
    assert gone.deleted and gone.runs_deleted == 2
    assert await _left(gw, thread_id) == (False, False)
    assert await gw.get_run(going.run_id) is None


async def test_the_bulk_deletions_skip_a_thread_an_edit_holds(gw: Gateway) -> None:
    """deleteThreads, pruneThreads olderThan and the expiry sweep delete the others and
    leave the held thread whole, rather than failing or deleting it under the edit."""
    registry = gw.manager.registry
    held = datetime.now(UTC) + timedelta(minutes=1)

    async def batch() -> tuple[list[str], str]:
        """Three threads, the middle one held by an edit's claim."""
        threads = [await idle_thread(gw) for _ in range(3)]
        assert await registry.claim_edit(threads[1], held, seen=True) is None
        return threads, threads[1]

    bulk, bulk_held = await batch()
    gone = await gw.delete_threads(ThreadFilter(ids=bulk), caller=ANONYMOUS)
    assert sorted(gone.thread_ids) == sorted(t for t in bulk if t != bulk_held)
    assert gone.has_more  # the held thread still matches: a client looping on it calls again

    pruned, pruned_held = await batch()
    report = await gw.prune_threads(
        ThreadFilter(ids=pruned), older_than=datetime.now(UTC), caller=ANONYMOUS
    )
    assert report.threads_deleted == 2

    swept, swept_held = await batch()
    for thread_id in swept:
        await registry.update_thread(thread_id, ttl_seconds=0, set_ttl=True)
    assert sorted(await gw.sweep_expired()) == sorted(t for t in swept if t != swept_held)

    for thread_id in bulk + pruned + swept:
        kept = thread_id in (bulk_held, pruned_held, swept_held)
        assert await _left(gw, thread_id) == (kept, kept)
    await registry.release_edit(bulk_held, held)
    assert (await gw.delete_thread(bulk_held)).deleted  # the edit over, the deletion goes


async def test_a_retry_ends_a_deletion_that_failed_after_it_started(gw: Gateway) -> None:
    """A deletion in steps marks the thread first (`start_deletion`: hidden, no edit can
    claim it); when it fails after that (an outage, a lost lock race, a cancellation), the
    client's retry deletes the thread and says so, not `deleted: false` for a thread that
    is still stored (on the memory store too: its expiry check took the mark for an
    elapsed ttl)."""
    thread_id = await idle_thread(gw)
    assert await gw.manager.registry.start_deletion(thread_id)  # ... and then it failed
    gone = await gw.delete_thread(thread_id)
    assert gone.deleted and gone.checkpoints_deleted > 0
    assert await _left(gw, thread_id) == (False, False)


async def test_two_deletions_of_one_thread_are_not_told_it_is_being_edited(gw: Gateway) -> None:
    """A deletion under way is no edit: a second deletion meanwhile is not refused."""
    thread_id = await idle_thread(gw)
    first, second = await asyncio.gather(gw.delete_thread(thread_id), gw.delete_thread(thread_id))
    assert first.deleted or second.deleted
    assert await _left(gw, thread_id) == (False, False)


async def test_an_edit_whose_claim_waited_for_a_deletion_to_start_is_not_found(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim read its clock, then waited for the thread's row while a write moved its
    updated_at past that reading and a deletion started (ttl 0: expires_at = updated_at).
    Judged by the clock read before the wait the row looked live: the claim held, the
    deletion went on, the thread's runs were hidden and the edit fell back to the default
    graph, answering BAD_USER_INPUT about the caller's values (seen once in the chaos
    audit, seed 8). It is NOT_FOUND: the thread is being deleted."""
    registry = gw.manager.registry
    made = await gw.create_thread(caller=ANONYMOUS)  # its metadata names no graph: its runs do
    thread_id = await idle_thread(gw, thread_id=made.thread_id)
    claim, clock = registry.claim_edit, edit_registry.utc_now

    async def waited_for_the_row(*args: Any, **kwargs: Any) -> str | None:
        read = [clock()]  # the claim's first reading, taken before the row's lock is had

        def reading() -> datetime:
            return read.pop() if read else clock()

        await registry.settle_edit(thread_id, ThreadStatus.IDLE)  # a write, then ...
        assert await registry.start_deletion(thread_id)  # ... the deletion's start
        monkeypatch.setattr(edit_registry, "utc_now", reading)
        return await claim(*args, **kwargs)

    monkeypatch.setattr(registry, "claim_edit", waited_for_the_row)
    with pytest.raises(CodeHeroError) as refused:
        await gw.update_state(UpdateState(thread_id, {"steps": ["edited"]}))
    monkeypatch.undo()
    assert isinstance(refused.value, NotFoundError), refused.value
    await gw.manager.purge_thread(thread_id)  # the deletion ends
    assert await _left(gw, thread_id) == (False, False)


async def test_an_edit_that_found_no_row_does_not_judge_a_deletion_by_an_old_clock(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The edit found no live row (a deletion had started), then asked whether the thread
    had expired with a clock read before a write (a run admitted or ending) moved its
    updated_at (= expires_at at ttl 0) past that reading: not expired, so it took the
    thread for one only the savers hold, whose row its claim made anew once the deletion
    had ended, and edited with the default graph (BAD_USER_INPUT). It is NOT_FOUND."""
    registry = gw.manager.registry
    thread_id = await idle_thread(gw)
    get, expired, claim = registry.get_thread, registry.expired_thread_ids, registry.claim_edit
    started = []

    async def deletion_started_first(thread_id: str, **kwargs: Any) -> ThreadRecord | None:
        if not started:
            started.append(await registry.start_deletion(thread_id) is not None)
        return await get(thread_id, **kwargs)

    async def touched_meanwhile(now: datetime, **kwargs: Any) -> list[str]:
        await registry.settle_edit(thread_id, ThreadStatus.IDLE)  # after `now` was read
        return await expired(now, **kwargs)

    async def deletion_ended_first(*args: Any, **kwargs: Any) -> str | None:
        await gw.manager.purge_thread(thread_id)
        return await claim(*args, **kwargs)

    monkeypatch.setattr(registry, "get_thread", deletion_started_first)
    monkeypatch.setattr(registry, "expired_thread_ids", touched_meanwhile)
    monkeypatch.setattr(registry, "claim_edit", deletion_ended_first)
    with pytest.raises(CodeHeroError) as refused:
        await gw.update_state(UpdateState(thread_id, {"steps": ["edited"]}))
    monkeypatch.undo()
    assert started == [True]
    assert isinstance(refused.value, NotFoundError), refused.value
    assert await registry.get_thread(thread_id, expired=True) is None  # not made anew
    await gw.manager.purge_thread(thread_id)  # the deletion ends (when the edit did not)
    assert await _left(gw, thread_id) == (False, False)
