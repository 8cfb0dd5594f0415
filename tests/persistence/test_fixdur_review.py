"""Review of `Merge fixdurable` (rv-fixdur): failing tests for defects found."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["primary_config"]  # the fixture, shared with test_entries

from code_hero.persistence.entries import CopyThread
from code_hero.persistence.records import RunRecord, RunStatus, ThreadStatus
from tests.persistence.test_entries import RUN, one_running_run, primary_config


async def test_a_late_copy_ends_a_run_the_executor_ended_on_the_fallback(
    primary_config: Any,
) -> None:
    """A copy-back cut short by a kill left the run RUNNING under exec-1's lease in the
    primary; the run then ended on the fallback, as the executor ends runs: its end
    clears the lease (`lease_owner=None`, executor.py). The next process replays the
    file's copy late: the end must reach the primary (nothing else carries it).

    `_end_if_still_ours` returns at once when the fallback's row has no lease owner,
    which is every run an executor ended: the run stays RUNNING in the primary, its
    end (status, output) lost; once the dead lease lapses it is claimed and run again."""
    now = datetime.now(UTC)
    async with one_running_run(primary_config, "exec-1") as (fallback, primary):
        thread = await primary.registry.get_thread("t")
        assert thread is not None
        await fallback.registry.put_thread(thread)
        await fallback.registry.put_run(
            RunRecord(RUN, "t", "g", RunStatus.RUNNING, created_at=now, lease_owner="exec-1")
        )
        ended, _ = await fallback.registry.finish_run(  # as RunExecutor ends a run
            RUN,
            ThreadStatus.IDLE,
            if_leased_by="exec-1",
            status=RunStatus.SUCCESS,
            output={"from": "outage"},
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
        assert ended is not None and ended.lease_owner is None

        await CopyThread("t", {}).late().replay(primary, fallback)

        run = await primary.registry.get_run(RUN)
        assert run is not None
        assert run.status is RunStatus.SUCCESS
        assert run.output == {"from": "outage"}
