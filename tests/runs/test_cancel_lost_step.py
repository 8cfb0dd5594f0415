"""A run whose executor was lost mid-step (its lease lapsed), then cancelled, ends
CANCELLED with that step ended too ("cancelled", as a step in flight at a cancel): the
step stayed open for good, running to a timeline (found by an outside audit)."""

from __future__ import annotations

from datetime import timedelta

from code_hero.gateway import Gateway
from code_hero.persistence import clock
from code_hero.persistence.records import RunRecord, RunStatus, StepRecord


async def test_a_step_its_lost_executor_left_open_ends_with_the_cancel(gateway: Gateway) -> None:
    registry = gateway.manager.registry
    now = clock.now()
    run = RunRecord(
        run_id="lost-mid-step",
        thread_id="lost-thread",
        graph="slow",
        status=RunStatus.PENDING,
        input={"steps": []},
        created_at=now,
    )
    admitted, _ = await registry.admit_run(run, reject_if_busy=True, new_thread=True)
    assert admitted is not None
    await registry.start_run(run.run_id, now)
    done = StepRecord("s0", "", now - timedelta(seconds=3), now - timedelta(seconds=2))
    open_step = StepRecord("s1", "", now - timedelta(seconds=2))
    # Its executor (another process) died mid-step: its lease lapsed a while ago.
    held = await registry.update_held_run(
        run.run_id,
        None,
        steps=(done, open_step),
        lease_owner="a-dead-replica",
        lease_expires_at=now - timedelta(seconds=30),
    )
    assert held is not None and held.status is RunStatus.RUNNING

    ended = await gateway.executor.cancel(run.run_id)
    assert ended.status is RunStatus.CANCELLED
    final = await registry.get_run(run.run_id)
    assert final is not None and final.status is RunStatus.CANCELLED
    assert [(s.node, s.error) for s in final.steps] == [("s0", None), ("s1", "cancelled")]
    assert final.steps[0] == done  # an ended step is kept as it was
    assert final.steps[1].finished_at is not None
    assert final.finished_at is not None and final.steps[1].finished_at <= final.finished_at
