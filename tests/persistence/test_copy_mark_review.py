"""Review of the copy's mark (`test_copy_mark.py`): cases where the primary's row, as the
mark judges it, lets a copy write what another executor's run already has."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import aiosqlite
import pytest
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from code_hero.config import CheckpointerConfig
from code_hero.persistence.entries import CopyThread
from code_hero.persistence.records import RunStatus, ThreadStatus
from code_hero.persistence.registry import PostgresRegistry, SqliteRegistry
from tests.persistence.registry.support import make_pool
from tests.persistence.test_copy_mark import (
    NOW,
    RUN,
    THREAD,
    _backends,
    _deliveries,
    _event,
    _PgBefore,
    _seqs,
    _SqliteBefore,
    primary_config,
)

__all__ = ["primary_config"]


@pytest.mark.parametrize("late", [False, True])
async def test_no_copied_event_follows_the_end_another_executor_wrote(
    primary_config: CheckpointerConfig, late: bool
) -> None:
    """exec-a (a process since killed, or the server whose file was adopted) had r1 in
    flight in the fallback; the first pass copied it with event 1. Its lease lapsed on
    the primary, exec-c (the restarted process, or another server) claimed r1 there,
    ran it and ended it, numbering on from 1. The rest of the file (exec-a's 2..4),
    replayed late (the file read at start, a quarantined copy retried): none of it
    belongs to exec-c's run, above all not after its end. The on-time copy leaves them;
    the late one appends exec-a's 3 and 4 after exec-c's end event (2)."""
    async with _backends(primary_config) as (fallback, primary):
        await fallback.registry.store_events([_event(1, "exec-a")])
        copy = CopyThread("t", {})
        await copy.unfinished().replay(primary, fallback)
        await fallback.registry.store_events([_event(s, "exec-a") for s in (2, 3, 4)])
        lapsed = NOW + timedelta(hours=1)  # exec-a's lease, as copied, has lapsed by then
        claimed = await primary.registry.claim_runs(
            "exec-c", now=lapsed, until=lapsed + timedelta(minutes=5), limit=1
        )
        assert [r.run_id for r in claimed] == ["r1"]
        ended, _ = await primary.registry.finish_run(
            "r1",
            ThreadStatus.IDLE,
            if_leased_by="exec-c",
            events=[_event(2, "exec-c")],
            status=RunStatus.SUCCESS,
            finished_at=lapsed,
            lease_owner=None,
            lease_expires_at=None,
        )
        assert ended is not None
        await (copy.late() if late else copy.unfinished()).replay(primary, fallback)
        assert await _seqs(primary) == [(1, "exec-a"), (2, "exec-c")]
        assert await _deliveries(primary) == 1


@pytest.mark.parametrize("late", [False, True])
async def test_a_run_copied_unleased_then_taken_over_and_released_there_is_left(
    primary_config: CheckpointerConfig, late: bool
) -> None:
    """As `test_copy_mark.test_a_run_released_there_by_another_is_left`, but r1 was
    copied while released here (PENDING, no lease: the mark (PENDING, NULL)). exec-b
    claims it on the primary, writes event 1 and releases it (a graceful stop): the row
    is (PENDING, NULL) again and looks as the copy left it. exec-a then ran r1 here to
    its end. The copy writes that end over the run exec-b took over, announces it, and
    mixes exec-a's events into exec-b's log."""
    async with _backends(primary_config) as (fallback, primary):
        released = replace(RUN, status=RunStatus.PENDING, lease_owner=None)
        await fallback.registry.put_run(released)
        copy = CopyThread("t", {})
        await copy.unfinished().replay(primary, fallback)
        claimed = await primary.registry.claim_runs(
            "exec-b", now=NOW, until=NOW + timedelta(minutes=5), limit=1
        )
        assert [r.run_id for r in claimed] == ["r1"]
        await primary.registry.store_events([_event(1, "exec-b")])
        await primary.registry.release_runs("exec-b", ["r1"])
        ended = replace(RUN, status=RunStatus.SUCCESS, lease_owner=None, finished_at=NOW)
        await fallback.registry.put_run(ended)
        await fallback.registry.store_events([_event(s, "exec-a") for s in (1, 2)])
        await (copy.late() if late else copy).replay(primary, fallback)
        there = await primary.registry.get_run("r1")
        assert there is not None
        assert (there.status, there.lease_owner) == (RunStatus.PENDING, None)
        assert await _seqs(primary) == [(1, "exec-b")]
        assert await _deliveries(primary) == 0


RELEASED = replace(RUN, status=RunStatus.PENDING, lease_owner=None)


async def _released_copied_before_the_upgrade(config: CheckpointerConfig) -> None:
    """The primary as the previous version's pass left it: r1 released here (PENDING,
    no lease) copied with no mark, and no lease kept in the file (none to keep)."""
    if config.database_path is None:  # PostgreSQL
        pool = make_pool(str(config.connection_string))
        await pool.open()
        try:
            old: SqliteRegistry | PostgresRegistry = _PgBefore(pool)
            await old.setup()
            await old.put_thread(THREAD)
            await old.put_run(RELEASED)
        finally:
            await pool.close()
        return
    async with aiosqlite.connect(str(config.database_path)) as conn:
        old = _SqliteBefore(conn, AsyncSqliteSaver(conn).lock)
        await old.setup()
        await old.put_thread(THREAD)
        await old.put_run(RELEASED)


@pytest.mark.parametrize("late", [False, True])
async def test_a_released_run_an_earlier_version_copied_is_ended_after_the_upgrade(
    primary_config: CheckpointerConfig, tmp_path: Path, late: bool
) -> None:
    """An earlier version copied r1 released (no lease, so no lease in its file). After
    the upgrade exec-a claimed r1 here and ran it to its end. On time the end goes in
    (an unmarked row is written); late it never does: `finish_run(if_as_copied=True)`
    asks an unmarked row for `lease_owner = NULL` (the file kept no lease, the ended
    row has none), which no row passes. r1 stays PENDING on the primary, unannounced,
    to be run again by whoever claims it."""
    await _released_copied_before_the_upgrade(primary_config)
    async with _backends(primary_config) as (fallback, primary):
        await fallback.registry.put_run(
            replace(RUN, status=RunStatus.SUCCESS, lease_owner=None, finished_at=NOW)
        )
        copy = CopyThread("t", {})
        await (copy.late() if late else copy).replay(primary, fallback)
        there = await primary.registry.get_run("r1")
        assert there is not None
        assert there.status == RunStatus.SUCCESS
        assert await _deliveries(primary) == 1


async def test_a_late_copy_adds_no_event_past_an_end_written_there(
    primary_config: CheckpointerConfig,
) -> None:
    """The end is a run's last event, whoever wrote it. r1 was copied with event 1 under
    exec-a, which then ended it on the primary with no claim in between (the row keeps
    the copy's mark), numbering its end on from what the primary had (2), while the
    fallback had its 2 and 3. The late copy fills no gap there is none of below the end
    and adds nothing after it: exec-a's 3 stays out (its 2 collides with the end)."""
    async with _backends(primary_config) as (fallback, primary):
        await fallback.registry.store_events([_event(1, "exec-a")])
        copy = CopyThread("t", {})
        await copy.unfinished().replay(primary, fallback)
        await fallback.registry.store_events([_event(s, "exec-a") for s in (2, 3)])
        ended, _ = await primary.registry.finish_run(
            "r1",
            ThreadStatus.IDLE,
            if_leased_by="exec-a",
            events=[_event(2, "end")],
            status=RunStatus.SUCCESS,
            finished_at=NOW,
            lease_owner=None,
            lease_expires_at=None,
        )
        assert ended is not None
        await copy.late().replay(primary, fallback)
        assert await _seqs(primary) == [(1, "exec-a"), (2, "end")]
        assert await _deliveries(primary) == 1


@pytest.mark.parametrize("late", [False, True])
async def test_a_run_reclaimed_there_by_the_executor_the_copy_wrote_is_still_ended(
    primary_config: CheckpointerConfig, late: bool
) -> None:
    """A claim by the executor the copy wrote (its lease lapsed there, exec-a claims r1
    again) keeps the copy's mark, as a renewal does: exec-a's end, copied after, goes
    in once, its events with it. (Only another executor's claim takes the run over.)"""
    async with _backends(primary_config) as (fallback, primary):
        await fallback.registry.store_events([_event(1, "exec-a")])
        copy = CopyThread("t", {})
        await copy.unfinished().replay(primary, fallback)
        lapsed = NOW + timedelta(hours=1)
        claimed = await primary.registry.claim_runs(
            "exec-a", now=lapsed, until=lapsed + timedelta(minutes=5), limit=1
        )
        assert [r.run_id for r in claimed] == ["r1"]
        await fallback.registry.put_run(replace(RUN, status=RunStatus.SUCCESS, finished_at=NOW))
        await fallback.registry.store_events([_event(2, "exec-a")])
        await (copy.late() if late else copy).replay(primary, fallback)
        there = await primary.registry.get_run("r1")
        assert there is not None
        assert there.status == RunStatus.SUCCESS
        assert await _seqs(primary) == [(1, "exec-a"), (2, "exec-a")]
        assert await _deliveries(primary) == 1
