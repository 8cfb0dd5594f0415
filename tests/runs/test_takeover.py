"""A run taken over after its executor died ends as it would have: its input, its fork
point and its resume answer are kept when it died before its first checkpoint."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from code_hero.gateway import Gateway
from code_hero.persistence.records import RunRecord, RunStatus
from code_hero.runs.executor import StartRun
from tests.graphql.clients import eventually

ALL_STEPS = [f"s{i}" for i in range(6)]


async def died_before_its_first_checkpoint(gw: Gateway, request: StartRun) -> RunRecord:
    """Start a run that an executor claims, marks RUNNING and dies with, before any
    checkpoint: the state a killed process leaves, its lease lapsed already."""
    claims = gw.executor.claims
    slots, claims.max_concurrent = claims.max_concurrent, 0  # it claims nothing meanwhile
    await gw.executor.recover()  # (a claim pass under way has ended)
    run = await gw.start_run(request)
    registry = gw.manager.registry
    now = datetime.now(UTC)
    (claimed,) = await registry.claim_runs(
        "executor-dead", now=now, until=now - timedelta(seconds=1), limit=1
    )
    assert claimed.run_id == run.run_id
    await registry.update_run(run.run_id, status=RunStatus.RUNNING, started_at=now)
    claims.max_concurrent = slots
    return run


async def taken_over(gw: Gateway, run: RunRecord) -> RunRecord:
    assert await gw.executor.recover() == 1, "the lapsed run is claimed here"
    return await gw.executor.wait(run.run_id, limit=30)


async def test_a_run_that_died_before_its_first_checkpoint_runs_its_input(
    gateway: Gateway,
) -> None:
    run = await died_before_its_first_checkpoint(
        gateway, StartRun(graph="slow", input={"steps": ["given"]})
    )
    final = await taken_over(gateway, run)
    assert final.status is RunStatus.SUCCESS, final.error
    assert final.output["steps"] == ["given", *ALL_STEPS]


async def test_a_fork_that_died_before_its_first_checkpoint_runs_from_its_fork_point(
    gateway: Gateway,
) -> None:
    first = await gateway.start_run(StartRun(graph="slow", input={}, wait=True))
    history = (await gateway.list_checkpoints(first.thread_id, first=100)).items
    after_s1 = next(c for c in history if c.values.get("steps") == ["s0", "s1"])
    fork: dict[str, Any] = {
        "graph": "slow",
        "thread_id": first.thread_id,
        "input": {"steps": ["forked"]},
        "from_checkpoint_id": after_s1.checkpoint_id,
    }
    run = await died_before_its_first_checkpoint(gateway, StartRun(**fork))
    final = await taken_over(gateway, run)
    assert final.status is RunStatus.SUCCESS, final.error
    alive = await gateway.start_run(StartRun(**fork, wait=True))  # the same fork, not killed
    assert final.output == alive.output
    assert final.output["steps"][:3] == ["s0", "s1", "forked"]
    everything = (await gateway.list_checkpoints(first.thread_id, first=100)).items
    children = [c for c in everything if c.parent_id == after_s1.checkpoint_id]
    assert len(children) == 3, "both forks branch off the fork point"


async def test_a_resume_that_died_before_its_first_checkpoint_keeps_its_answer(
    gateway: Gateway,
) -> None:
    asked = await gateway.start_run(StartRun(graph="slow", input={"ask_at": "s2"}, wait=True))
    assert asked.status is RunStatus.INTERRUPTED
    run = await died_before_its_first_checkpoint(
        gateway, StartRun(graph="slow", thread_id=asked.thread_id, resume="ok")
    )
    final = await taken_over(gateway, run)
    assert final.status is RunStatus.SUCCESS, final.error
    assert final.output["steps"] == ALL_STEPS and final.output["answers"] == ["ok"]


async def test_a_fork_that_died_after_its_checkpoints_resumes_from_them(
    gateway: Gateway,
) -> None:
    # A guard: the takeover must not start such a run again from its fork point.
    first = await gateway.start_run(StartRun(graph="slow", input={}, wait=True))
    history = (await gateway.list_checkpoints(first.thread_id, first=100)).items
    after_s1 = next(c for c in history if c.values.get("steps") == ["s0", "s1"])
    run = await gateway.start_run(
        StartRun(
            graph="slow",
            thread_id=first.thread_id,
            input={"steps": ["forked"], "delay": 0.5},
            from_checkpoint_id=after_s1.checkpoint_id,
            metadata={"run_id": "a user's own"},  # the checkpoints still name the run
        )
    )
    async with asyncio.timeout(30):
        while True:  # until the fork has written its first checkpoint
            latest = await gateway.manager.get_checkpoint(first.thread_id)
            if latest is not None and latest.values.get("steps", [])[:3] == ["s0", "s1", "forked"]:
                break
            await asyncio.sleep(0.02)
    executor = gateway.executor
    executor.stop(run.run_id, lost=True)  # its executor dies: the run stays RUNNING
    await eventually(lambda: not executor.is_active(run.run_id))
    await gateway.manager.registry.release_runs(executor.owner, [run.run_id])  # lapsed
    final = await taken_over(gateway, run)
    assert final.status is RunStatus.SUCCESS, final.error
    everything = (await gateway.list_checkpoints(first.thread_id, first=100)).items
    children = [c for c in everything if c.parent_id == after_s1.checkpoint_id]
    assert len(children) == 2, "one branch for the fork, however often it was taken over"
    events = await gateway.run_events(run.run_id, first=1000)
    steps_seen = [e.payload["node"] for e in events if e.type == "node_update"]
    assert sorted(steps_seen) == ALL_STEPS, "every step of the fork exactly once"
