"""An outage's copy-back judges a run by the primary's row: the mark a copy leaves on it
(the status and lease owner it wrote, `migrations._COPY_MARK`), read under the row's
lock (`Registry.copy_thread`, `finish_run(if_as_copied=True)`, `put_events(as_copy=)`),
not by what this replica remembers of its leases. So a copy never writes what another
executor's run already has there: no event after an end written there, nothing of a
run taken over (and released) there; and a run the executor the copy wrote claims
again, or an upgrade finds copied with no mark, is still ended once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite
import pytest
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from code_hero.config import CheckpointerConfig, create_memory_checkpointer
from code_hero.persistence.backends import Backend, open_backend
from code_hero.persistence.entries import CopyThread, Leases
from code_hero.persistence.migrations import _COPY_MARK as COPY_MARK
from code_hero.persistence.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from code_hero.persistence.records import (
    EventRecord,
    RunRecord,
    RunStatus,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.persistence.registry import PostgresRegistry, SqliteRegistry
from code_hero.persistence.registry.dialect import RUN_FIELDS
from code_hero.persistence.registry.sql import SqlRegistry
from code_hero.persistence.webhooks import DeliveryFilter, WebhookEvent, WebhookRecord
from tests.conftest import make_config
from tests.persistence.registry.support import make_pool

NOW = datetime.now(UTC)
THREAD = ThreadRecord("t", "u", ThreadStatus.BUSY, {}, NOW, NOW)
RUN = RunRecord(
    "r1", "t", "g", RunStatus.RUNNING, user_id="u", created_at=NOW, lease_owner="exec-a"
)
ENDED = replace(RUN, status=RunStatus.SUCCESS, lease_owner=None, finished_at=NOW)
# r1 released (PENDING, no lease) when copied: no lease kept in the file (none to keep).
RELEASED = replace(RUN, status=RunStatus.PENDING, lease_owner=None)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def primary_config(request: pytest.FixtureRequest) -> CheckpointerConfig:
    return make_config(request.param, request)


def _event(seq: int, by: str) -> EventRecord:
    return EventRecord("r1", "t", seq, "status", {"by": by}, NOW)


@asynccontextmanager
async def _backends(primary_config: CheckpointerConfig) -> AsyncIterator[tuple[Backend, Backend]]:
    """(fallback, primary): the fallback holds the thread born in the outage and r1 in
    flight under exec-a; the primary has a webhook that wants r1's end."""
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await fallback.registry.put_thread(THREAD)
        await fallback.registry.put_run(RUN)
        hook = WebhookRecord(
            "wh1", "u", "https://hooks.example.com/a", (WebhookEvent.RUN_SUCCEEDED,), NOW
        )
        await primary.registry.create_webhook(hook, "whsec_c2VjcmV0")
        yield fallback, primary


async def _first_pass_with_event_1(fallback: Backend, primary: Backend) -> CopyThread:
    """exec-a's event 1 of r1 in the fallback, copied by a first pass; the thread's copy."""
    await fallback.registry.store_events([_event(1, "exec-a")])
    copy = CopyThread("t", {})
    await copy.unfinished().replay(primary, fallback)
    return copy


async def _ended_there(primary: Backend, by: str, end: EventRecord, at: datetime = NOW) -> None:
    """`by`, holding r1's lease on the primary, ends it there with the event `end`."""
    ended, _ = await primary.registry.finish_run(
        "r1",
        ThreadStatus.IDLE,
        if_leased_by=by,
        events=[end],
        status=RunStatus.SUCCESS,
        finished_at=at,
        lease_owner=None,
        lease_expires_at=None,
    )
    assert ended is not None


async def _seqs(primary: Backend) -> list[tuple[int, str]]:
    return [(e.seq, e.payload["by"]) for e in await primary.registry.list_events("r1")]


async def _deliveries(primary: Backend) -> int:
    return await primary.registry.count_deliveries(DeliveryFilter())


@pytest.mark.parametrize("late", [False, True])
async def test_a_run_renewed_there_by_its_own_executor_is_still_ended(
    primary_config: CheckpointerConfig, late: bool
) -> None:
    """A renewal keeps the lease's owner: the row is still as the copy left it (the mark
    holds the owner, not the lease's expiry), and the end goes in, announced once."""
    async with _backends(primary_config) as (fallback, primary):
        copy = CopyThread("t", {})
        await copy.unfinished().replay(primary, fallback)
        renewed = await primary.registry.renew_leases("exec-a", ["r1"], NOW + timedelta(minutes=5))
        assert [r.run_id for r in renewed] == ["r1"]
        await fallback.registry.put_run(ENDED)
        await (copy.late() if late else copy).replay(primary, fallback)
        there = await primary.registry.get_run("r1")
        assert there is not None
        assert (there.status, there.lease_owner) == (RunStatus.SUCCESS, None)
        assert await _deliveries(primary) == 1
        await copy.replay(primary, fallback)  # once more, on time: nothing twice
        await copy.late().replay(primary, fallback)
        assert await _deliveries(primary) == 1


@pytest.mark.parametrize("late", [False, True])
async def test_a_run_released_there_by_another_is_left(
    primary_config: CheckpointerConfig, late: bool
) -> None:
    """Another executor took r1 over on the primary and released it (a graceful stop):
    its lease is gone, but so is the copy's. The end from the fallback is neither
    written nor announced, on time and late alike."""
    async with _backends(primary_config) as (fallback, primary):
        copy = CopyThread("t", {})
        await copy.unfinished().replay(primary, fallback)
        await primary.registry.put_run(replace(RUN, lease_owner="exec-b"))  # taken over
        await primary.registry.release_runs("exec-b", ["r1"])
        await fallback.registry.put_run(ENDED)
        await (copy.late() if late else copy).replay(primary, fallback)
        there = await primary.registry.get_run("r1")
        assert there is not None
        assert (there.status, there.lease_owner) == (RunStatus.RUNNING, None)
        assert await _deliveries(primary) == 0


@pytest.mark.parametrize("late", [False, True])
async def test_the_events_of_a_run_another_executor_holds_are_left(
    primary_config: CheckpointerConfig, late: bool
) -> None:
    """exec-b took r1 over on the primary and numbers its events on from there (2): the
    copy's events of r1 after the first pass (2, 3) are left, on time and late; they
    would collide with exec-b's or make its next write collide."""
    async with _backends(primary_config) as (fallback, primary):
        copy = await _first_pass_with_event_1(fallback, primary)
        await primary.registry.put_run(replace(RUN, lease_owner="exec-b"))  # taken over
        await primary.registry.store_events([_event(2, "exec-b")])
        await fallback.registry.store_events([_event(s, "exec-a") for s in (2, 3)])
        await (copy.late() if late else copy.unfinished()).replay(primary, fallback)
        assert await _seqs(primary) == [(1, "exec-a"), (2, "exec-b")]


async def test_a_late_copy_adds_the_events_of_a_run_this_replica_ended_there(
    primary_config: CheckpointerConfig,
) -> None:
    """After the switch back this replica's executor went on with r1 on the primary and
    ended it there (its lease cleared; its end event numbered after what it wrote to
    the fallback). The copy of those events was quarantined: the late copy adds them
    (a run ended or released there since may be this replica's own doing: only a lease
    another executor holds there leaves them)."""
    async with _backends(primary_config) as (fallback, primary):
        copy = await _first_pass_with_event_1(fallback, primary)
        await fallback.registry.store_events([_event(s, "exec-a") for s in (2, 3)])
        await _ended_there(primary, "exec-a", _event(4, "exec-a"))
        await copy.late().replay(primary, fallback)
        assert await _seqs(primary) == [(s, "exec-a") for s in (1, 2, 3, 4)]


async def test_events_past_the_copys_first_page_are_left_for_a_run_taken_over(
    primary_config: CheckpointerConfig,
) -> None:
    """The second pass has 600 new events of r1, which exec-b took over on the primary:
    the transaction leaves the first 500, and the pages after it (`_copy_events`,
    after the commit) are left too."""
    async with _backends(primary_config) as (fallback, primary):
        copy = await _first_pass_with_event_1(fallback, primary)
        await primary.registry.put_run(replace(RUN, lease_owner="exec-b"))  # taken over
        await fallback.registry.store_events([_event(s, "exec-a") for s in range(2, 602)])
        await copy.unfinished().replay(primary, fallback)
        assert await _seqs(primary) == [(1, "exec-a")]


async def test_events_past_the_copys_first_page_follow_its_own_end(
    primary_config: CheckpointerConfig,
) -> None:
    """r1 ended here with 700 events: the copy puts the end in with all of them, in one
    transaction (`test_copy_order.py`)."""
    async with _backends(primary_config) as (fallback, primary):
        await fallback.registry.put_run(ENDED)
        await fallback.registry.store_events([_event(s, "exec-a") for s in range(1, 701)])
        await CopyThread("t", {}).replay(primary, fallback)
        assert [s for s, _ in await _seqs(primary)] == list(range(1, 701))
        assert await _deliveries(primary) == 1


async def test_an_end_copied_late_marks_the_row_as_the_on_time_copy_does(
    primary_config: CheckpointerConfig,
) -> None:
    """A late end clears the lease, as the executor's and the on-time copy's do, and
    leaves the row as a copy left it: the events after it are still the copy's."""
    async with _backends(primary_config) as (fallback, primary):
        copy = CopyThread("t", {})
        await copy.unfinished().replay(primary, fallback)
        await fallback.registry.put_run(ENDED)
        await fallback.registry.store_events([_event(1, "exec-a")])
        await copy.late().replay(primary, fallback)
        there = await primary.registry.get_run("r1")
        assert there is not None
        assert (there.status, there.lease_owner, there.lease_expires_at) == (
            RunStatus.SUCCESS,
            None,
            None,
        )
        assert await _seqs(primary) == [(1, "exec-a")]
        assert await _deliveries(primary) == 1


class _RunsBefore(SqlRegistry):
    """A run's row as the version before the copy's mark wrote it: without the columns
    added since (seq_reserved)."""

    def _run_copy(self, run: RunRecord) -> tuple[str, list[Any]]:
        _, params = super()._run_copy(run)
        names = RUN_FIELDS[: RUN_FIELDS.index("seq_reserved")]
        sql = (
            f"INSERT INTO code_hero_runs ({', '.join(names)}) "
            f"VALUES ({', '.join('?' for _ in names)})"
        )
        return sql, params[: len(names)]


class _SqliteBefore(_RunsBefore, SqliteRegistry):
    """The registry as the previous version had it (no copy's mark)."""

    migrations = SQLITE_MIGRATIONS[: SQLITE_MIGRATIONS.index(COPY_MARK)]


class _PgBefore(_RunsBefore, PostgresRegistry):
    migrations = POSTGRES_MIGRATIONS[: POSTGRES_MIGRATIONS.index(COPY_MARK)]


async def _copied_before_the_upgrade(config: CheckpointerConfig, run: RunRecord = RUN) -> None:
    """The primary as the previous version's first pass left it: the thread and `run`
    copied with no mark (r1 in flight under exec-a unless told)."""
    if config.database_path is None:  # PostgreSQL
        pool = make_pool(str(config.connection_string))
        await pool.open()
        try:
            old: SqliteRegistry | PostgresRegistry = _PgBefore(pool)
            await old.setup()
            await old.put_thread(THREAD)
            await old.put_run(run)
        finally:
            await pool.close()
        return
    async with aiosqlite.connect(str(config.database_path)) as conn:
        old = _SqliteBefore(conn, AsyncSqliteSaver(conn).lock)
        await old.setup()
        await old.put_thread(THREAD)
        await old.put_run(run)


@pytest.mark.parametrize("late", [False, True])
async def test_a_run_an_earlier_version_copied_is_ended_after_the_upgrade(
    primary_config: CheckpointerConfig, late: bool
) -> None:
    """The primary was upgraded between two passes: its row of r1 has no copy's mark.
    It is judged as the earlier version did: on time the copy writes it; late, its end
    goes in while the lease that version kept in the journal's file holds it. Ended
    and announced once; the row is marked from then on."""
    await _copied_before_the_upgrade(primary_config)
    async with _backends(primary_config) as (fallback, primary):
        leased = Leases({"r1": "exec-a"})  # as the previous version's file kept it
        copy = CopyThread("t", {}, leased=leased)
        await fallback.registry.put_run(ENDED)
        await (copy.late() if late else copy).replay(primary, fallback)
        there = await primary.registry.get_run("r1")
        assert there is not None
        assert (there.status, there.lease_owner) == (RunStatus.SUCCESS, None)
        assert await _deliveries(primary) == 1
        assert "r1" not in leased


async def test_a_late_copy_leaves_a_run_an_earlier_version_copied_under_another_lease(
    primary_config: CheckpointerConfig,
) -> None:
    """An unmarked row another executor holds (its lease not the one the file kept):
    left by a late copy, as the earlier version left it."""
    await _copied_before_the_upgrade(primary_config)
    async with _backends(primary_config) as (fallback, primary):
        await primary.registry.put_run(replace(RUN, lease_owner="exec-b"))  # taken over
        copy = CopyThread("t", {}, leased=Leases({"r1": "exec-a"}))
        await fallback.registry.put_run(ENDED)
        await copy.late().replay(primary, fallback)
        there = await primary.registry.get_run("r1")
        assert there is not None
        assert (there.status, there.lease_owner) == (RunStatus.RUNNING, "exec-b")
        assert await _deliveries(primary) == 0


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
        copy = await _first_pass_with_event_1(fallback, primary)
        await fallback.registry.store_events([_event(s, "exec-a") for s in (2, 3, 4)])
        lapsed = NOW + timedelta(hours=1)  # exec-a's lease, as copied, has lapsed by then
        claimed = await primary.registry.claim_runs(
            "exec-c", now=lapsed, until=lapsed + timedelta(minutes=5), limit=1
        )
        assert [r.run_id for r in claimed] == ["r1"]
        await _ended_there(primary, "exec-c", _event(2, "exec-c"), at=lapsed)
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


@pytest.mark.parametrize("late", [False, True])
async def test_a_released_run_an_earlier_version_copied_is_ended_after_the_upgrade(
    primary_config: CheckpointerConfig, late: bool
) -> None:
    """An earlier version copied r1 released (no lease, so no lease in its file). After
    the upgrade exec-a claimed r1 here and ran it to its end. On time the end goes in
    (an unmarked row is written); late it never does: `finish_run(if_as_copied=True)`
    asks an unmarked row for `lease_owner = NULL` (the file kept no lease, the ended
    row has none), which no row passes. r1 stays PENDING on the primary, unannounced,
    to be run again by whoever claims it."""
    await _copied_before_the_upgrade(primary_config, RELEASED)
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
        copy = await _first_pass_with_event_1(fallback, primary)
        await fallback.registry.store_events([_event(s, "exec-a") for s in (2, 3)])
        await _ended_there(primary, "exec-a", _event(2, "end"))
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
        copy = await _first_pass_with_event_1(fallback, primary)
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
