"""pruneThreads' keepLatest beside runs asked to start from a past checkpoint (forks),
on memory, SQLite and PostgreSQL: a queued fork still starts where it was asked, one
admitted while the prune was under way too (its runs are read in the deletion's own
transaction; on PostgreSQL with the thread's row locked first, as admission locks it),
one whose checkpoint went before its admission ends NOT_FOUND (never
runs from nothing), and a running one is unharmed; an edit in progress
(updateState(checkpointId:)) keeps its base checkpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from code_hero.auth import ANONYMOUS
from code_hero.gateway import Gateway
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import MultitaskStrategy, StartRun
from code_hero.runs.requests import UpdateState
from tests.runs.test_executor import wait_status, wait_steps

STEPS = [f"s{i}" for i in range(6)]
FORKED = ["s0", "s1", "forked", *STEPS]  # input at a checkpoint starts from START


async def finished_thread(gateway: Gateway) -> tuple[str, str]:
    """A thread whose run went through every step, and its checkpoint after s1."""
    first = await gateway.start_run(StartRun(graph="slow", input={}, wait=True))
    history = (await gateway.list_checkpoints(first.thread_id, first=100)).items
    after_s1 = next(c for c in history if c.values.get("steps") == ["s0", "s1"])
    return first.thread_id, after_s1.checkpoint_id


def fork(thread_id: str, checkpoint_id: str, **more: Any) -> StartRun:
    return StartRun(
        graph="slow",
        thread_id=thread_id,
        input={"steps": ["forked"], "delay": 0.0, **more},
        from_checkpoint_id=checkpoint_id,
        multitask=MultitaskStrategy.ENQUEUE,
    )


async def prune(gateway: Gateway) -> int:
    report = await gateway.prune_threads(None, keep_latest=1, caller=ANONYMOUS)
    return report.checkpoints_deleted


async def test_keep_latest_spares_the_checkpoint_a_queued_fork_starts_from(
    gateway: Gateway,
) -> None:
    thread_id, after_s1 = await finished_thread(gateway)
    busy = await gateway.start_run(StartRun(graph="slow", thread_id=thread_id, input={"delay": 5}))
    await wait_status(gateway, busy.run_id, RunStatus.RUNNING)
    queued = await gateway.start_run(fork(thread_id, after_s1))

    assert await prune(gateway) > 0
    assert (await gateway.get_run(queued.run_id)).status is RunStatus.PENDING  # type: ignore[union-attr]
    assert await gateway.get_checkpoint(thread_id, after_s1) is not None
    await gateway.cancel_run(busy.run_id)  # the fork's turn
    done = await gateway.executor.wait(queued.run_id, limit=30)
    assert done.status is RunStatus.SUCCESS
    assert done.output["steps"] == FORKED

    # Once no unfinished run names it, the checkpoint is pruned like any other.
    await prune(gateway)
    assert await gateway.get_checkpoint(thread_id, after_s1) is None


async def test_a_fork_whose_checkpoint_goes_before_its_admission_ends_not_found(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_id, after_s1 = await finished_thread(gateway)
    latest = await gateway.get_checkpoint(thread_id)
    registry = gateway.manager.registry
    admit = registry.admit_run

    async def pruned_first(*args: Any, **kwargs: Any) -> Any:
        # startRun has found the checkpoint; a prune that read the thread's runs
        # before this one was admitted deletes it now.
        await prune(gateway)
        return await admit(*args, **kwargs)

    monkeypatch.setattr(registry, "admit_run", pruned_first)
    asked = await gateway.start_run(fork(thread_id, after_s1))
    monkeypatch.undo()
    done = await gateway.executor.wait(asked.run_id, limit=30)
    assert done.status is RunStatus.ERROR
    assert done.error is not None and done.error.startswith("NotFoundError: ")
    assert "no longer in thread" in done.error
    # Nothing ran from an empty state: the thread's latest checkpoint is as it was.
    now = await gateway.get_checkpoint(thread_id)
    assert now is not None and latest is not None
    assert (now.checkpoint_id, now.values) == (latest.checkpoint_id, latest.values)


async def test_keep_latest_while_a_fork_runs(gateway: Gateway) -> None:
    thread_id, after_s1 = await finished_thread(gateway)
    running = await gateway.start_run(fork(thread_id, after_s1, delay=0.2))
    await wait_status(gateway, running.run_id, RunStatus.RUNNING)
    await wait_steps(gateway, thread_id, 0)  # the fork has checkpointed its input
    assert await prune(gateway) > 0
    done = await gateway.executor.wait(running.run_id, limit=30)
    assert done.status is RunStatus.SUCCESS
    assert done.output["steps"] == FORKED
    latest = await gateway.get_checkpoint(thread_id)
    assert latest is not None and latest.values["steps"] == FORKED
    # The thread goes on from the fork's end.
    after = await gateway.start_run(
        StartRun(graph="slow", thread_id=thread_id, input={}, wait=True)
    )
    assert after.status is RunStatus.SUCCESS and after.output["steps"] == FORKED + STEPS


async def test_a_fork_admitted_while_keep_latest_is_under_way_keeps_its_checkpoint(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The window: a prune has started (and may have looked for forks: there were none);
    # a fork is asked for, admitted, claimed and finds its checkpoint at its start; only
    # then does the prune delete. The fork must start from its checkpoint, not nothing.
    thread_id, after_s1 = await finished_thread(gateway)
    manager = gateway.manager
    backend = manager._serving_backend("a test")
    delete, get_checkpoint = backend.keep_latest, manager.get_checkpoint
    checked, pruned = asyncio.Event(), asyncio.Event()
    asked: list[str] = []
    looks = 0

    async def start_checked(thread: str, checkpoint_id: str | None = None, *a: Any) -> Any:
        nonlocal looks
        found = await get_checkpoint(thread, checkpoint_id, *a)
        if checkpoint_id == after_s1:
            looks += 1
            if looks == 2:  # the executor's check at the fork's start (1: startRun's)
                checked.set()
                await pruned.wait()  # LangGraph reads the checkpoint after the delete
        return found

    async def fork_first(thread: str, keep: int, *rest: Any) -> int:
        if thread == thread_id and not asked:
            asked.append((await gateway.start_run(fork(thread_id, after_s1))).run_id)
            await checked.wait()
        try:
            return await delete(thread, keep, *rest)
        finally:
            pruned.set()

    monkeypatch.setattr(manager, "get_checkpoint", start_checked)
    monkeypatch.setattr(backend, "keep_latest", fork_first)
    assert await prune(gateway) > 0
    done = await gateway.executor.wait(asked[0], limit=30)
    monkeypatch.undo()
    assert done.status is RunStatus.SUCCESS
    assert done.output["steps"] == FORKED  # from nothing: ["forked", *STEPS]
    assert await gateway.get_checkpoint(thread_id, after_s1) is not None


async def test_keep_latest_leaves_a_thread_an_edit_holds(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # updateState(checkpointId:) has claimed the thread and found its base checkpoint; a
    # prune comes before its write. The edit must apply to that checkpoint, not nothing.
    thread_id, after_s1 = await finished_thread(gateway)
    manager = gateway.manager
    get_checkpoint = manager.get_checkpoint
    counts: list[int] = []

    async def pruned_after_the_check(thread: str, checkpoint_id: str | None = None, *a: Any) -> Any:
        found = await get_checkpoint(thread, checkpoint_id, *a)
        if checkpoint_id == after_s1 and not counts:
            counts.append(await prune(gateway))
        return found

    monkeypatch.setattr(manager, "get_checkpoint", pruned_after_the_check)
    edited = await gateway.update_state(
        UpdateState(thread_id, {"steps": ["edited"]}, checkpoint_id=after_s1)
    )
    monkeypatch.undo()
    assert counts == [0]  # the thread was left alone
    assert edited.values["steps"] == ["s0", "s1", "edited"]
    assert await gateway.get_checkpoint(thread_id, after_s1) is not None
    # Once the edit has ended, the thread is pruned like any other.
    assert await prune(gateway) > 0
    assert await gateway.get_checkpoint(thread_id, after_s1) is None


async def until_waiting_for_a_lock(
    backend: Any, query: str, other_than: int, unless: Callable[[], bool] = lambda: False
) -> None:
    """Until a session of the test's database (not `other_than`) waits for a lock running a
    statement that starts with `query` (or `unless()` holds)."""
    async with asyncio.timeout(10), backend._pool.connection() as conn:
        while not unless():
            cur = await conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> %s AND starts_with(query, %s)",
                (other_than, query),
            )
            if await cur.fetchone() is not None:
                return
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("backend_config", ["postgres"], indirect=True)
async def test_a_fork_admitted_while_keep_latest_waits_for_the_thread_keeps_its_checkpoint(
    gateway: Gateway,
) -> None:
    # On PostgreSQL: a fork's admission holds the thread's row (here a session holds it
    # for it) when the prune comes. The prune waits for it, then sees the fork: its
    # checkpoint stays, and the fork starts from it rather than ending NOT_FOUND.
    thread_id, after_s1 = await finished_thread(gateway)
    backend = gateway.manager._serving_backend("a test")
    async with backend._pool.connection() as holder:
        pid = holder.info.backend_pid
        await holder.execute("BEGIN")
        await holder.execute(
            "SELECT 1 FROM code_hero_threads WHERE thread_id = %s FOR UPDATE", (thread_id,)
        )
        asking = asyncio.create_task(gateway.start_run(fork(thread_id, after_s1)))
        await until_waiting_for_a_lock(backend, "INSERT INTO code_hero_threads", pid)
        pruning = asyncio.create_task(prune(gateway))
        await until_waiting_for_a_lock(
            backend,
            "SELECT 1 FROM code_hero_threads WHERE thread_id = $1 FOR UPDATE",
            pid,
            pruning.done,
        )
        await holder.execute("ROLLBACK")  # the admission goes on, the prune after it
    asked = await asking
    assert await pruning > 0
    done = await gateway.executor.wait(asked.run_id, limit=30)
    assert done.status is RunStatus.SUCCESS, done.error
    assert done.output["steps"] == FORKED
    assert await gateway.get_checkpoint(thread_id, after_s1) is not None


@pytest.mark.parametrize("backend_config", ["postgres"], indirect=True)
async def test_a_fork_of_a_thread_only_the_savers_hold_never_runs_from_nothing(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL, a thread with checkpoints and no registry row (the CLI's prune goes
    # through those too): there is no row to lock, and the fork's admission makes one.
    # The prune's delete waits (here for a session holding the checkpoint's row) while
    # the fork is asked for; the fork must wait for the prune and end NOT_FOUND, not be
    # admitted, pass its start check and run from nothing once the delete commits.
    thread_id, after_s1 = await finished_thread(gateway)
    manager = gateway.manager
    backend = manager._serving_backend("a test")
    async with backend._pool.connection() as conn:
        await conn.execute("DELETE FROM code_hero_threads WHERE thread_id = %s", (thread_id,))
    get_checkpoint = manager.get_checkpoint
    checked = asyncio.Event()
    looks = 0
    pruning: asyncio.Task[Any] | None = None

    async def start_checked(thread: str, checkpoint_id: str | None = None, *a: Any) -> Any:
        nonlocal looks
        found = await get_checkpoint(thread, checkpoint_id, *a)
        if checkpoint_id == after_s1:
            looks += 1
            if looks == 2 and pruning is not None:  # the executor's check at the start
                checked.set()
                await asyncio.wait([pruning])  # LangGraph reads after the delete
        return found

    monkeypatch.setattr(manager, "get_checkpoint", start_checked)
    async with backend._pool.connection() as holder:
        pid = holder.info.backend_pid
        await holder.execute("BEGIN")
        await holder.execute(
            "SELECT 1 FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' "
            "AND checkpoint_id = %s FOR UPDATE",
            (thread_id, after_s1),
        )
        pruning = asyncio.create_task(manager.prune(keep_latest=1))
        await until_waiting_for_a_lock(backend, "DELETE FROM checkpoints c USING", pid)
        asking = asyncio.create_task(gateway.start_run(fork(thread_id, after_s1)))
        await until_waiting_for_a_lock(
            backend, "INSERT INTO code_hero_threads", pid, checked.is_set
        )
        await holder.execute("ROLLBACK")  # the prune goes on, the admission after it
    assert (await pruning).checkpoints_deleted > 0
    asked = await asking
    done = await gateway.executor.wait(asked.run_id, limit=30)
    monkeypatch.undo()
    assert done.status is RunStatus.ERROR, done.output  # not ["forked", *STEPS]
    assert done.error is not None and done.error.startswith("NotFoundError: ")
