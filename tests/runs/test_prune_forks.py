"""pruneThreads' keepLatest beside runs asked to start from a past checkpoint (forks),
on memory, SQLite and PostgreSQL: a queued fork still starts where it was asked, one
whose checkpoint went before its admission ends NOT_FOUND (never runs from nothing),
and a running one is unharmed."""

from __future__ import annotations

from typing import Any

import pytest

from code_hero.auth import ANONYMOUS
from code_hero.gateway import Gateway
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import MultitaskStrategy, StartRun
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
