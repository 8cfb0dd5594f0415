"""Copying a thread born in an outage back to the primary in one transaction
(`Registry.copy_thread`, `CopyThread`'s on-time and late passes).

The copy's upsert is guarded: an on-time copy never takes an end back, keeps a cancel
requested there, leaves a run another executor took over (and its events), and still
ends a run that is ours (under the lease an earlier pass put it in, kept in `owners`,
or released here between passes). The ends of thousands of runs go in as deliveries in
chunks (`_INSERTS_A_STATEMENT`), each once, all or none with the copy, and the drain
gets past such a thread; a deletion between the copy's two trips waits and wins.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from code_hero.config import (
    CheckpointerConfig,
    create_memory_checkpointer,
    create_postgres_checkpointer,
)
from code_hero.persistence.backends import Backend, open_backend
from code_hero.persistence.entries import CopyThread
from code_hero.persistence.journal import Journal
from code_hero.persistence.records import (
    EventRecord,
    RunRecord,
    RunStatus,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.persistence.unreachable import is_backend_error
from code_hero.persistence.webhooks import (
    RUN_WEBHOOK_KEY,
    DeliveryFilter,
    WebhookEvent,
    WebhookRecord,
)
from tests.conftest import PG_ADMIN_URL
from tests.faults import until
from tests.persistence.test_copy_mark import primary_config

__all__ = ["primary_config"]  # the fixture, shared with test_copy_mark


def _in_flight() -> tuple[datetime, ThreadRecord, RunRecord]:
    """Now, thread t busy and its run r1 running under exec-a, as the fallback has them."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.BUSY, {}, now, now)
    run = RunRecord(
        "r1", "t", "g", RunStatus.RUNNING, user_id="u", created_at=now, lease_owner="exec-a"
    )
    return now, thread, run


def _ended_in_the_outage(count: int, now: datetime, digits: int = 5) -> list[RunRecord]:
    """`count` runs of thread t ended in the outage, created a millisecond apart."""
    return [
        RunRecord(
            f"r{n:0{digits}}", "t", "g", RunStatus.SUCCESS, user_id="u",
            created_at=now + timedelta(milliseconds=n), finished_at=now,
        )
        for n in range(count)
    ]  # fmt: skip


@asynccontextmanager
async def _copying(
    primary_config: CheckpointerConfig, thread: ThreadRecord, runs: list[RunRecord]
) -> AsyncIterator[tuple[Backend, Backend]]:
    """A memory fallback holding `thread` and `runs`, and the primary to copy them to."""
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await fallback.registry.put_thread(thread)
        for run in runs:
            await fallback.registry.put_run(run)
        yield fallback, primary


def _refused_once(primary: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The primary's next `copy_thread` fails before it writes (a lock timeout)."""
    registry: Any = primary.registry
    copy_thread, refused = registry.copy_thread, []

    async def once(*args: Any, **kwargs: Any) -> bool:
        if not refused:
            refused.append(True)
            raise psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
        return bool(await copy_thread(*args, **kwargs))

    monkeypatch.setattr(registry, "copy_thread", once)


@pytest.mark.parametrize("late", [False, True])
async def test_a_run_still_ours_is_ended_after_a_pass_that_failed_under_a_new_lease(
    primary_config: CheckpointerConfig, monkeypatch: pytest.MonkeyPatch, late: bool
) -> None:
    """The first pass put r1 in under exec-a. A restart here (exec-b, its lease on the
    fallback after exec-a's lapsed) and a pass that failed (a lock timeout, retried):
    `_on_time` records exec-b in `leased` before the copy goes in, and the copy does
    not. The run then ends here: the next pass's `owners` says exec-b, the primary
    still has exec-a, the copy's own, so the run is 'another executor's' and left
    RUNNING, its end never written nor announced (exec-a is gone: its lease lapses and
    the run is run again there). On time: a regression of the merge (passes at
    55d9b9e^1). Late (`_end_if_still_ours`): pre-existing, fails at both."""
    now, thread, run = _in_flight()
    hook = WebhookRecord(
        "wh1", "u", "https://hooks.example.com/a", (WebhookEvent.RUN_SUCCEEDED,), now
    )
    async with _copying(primary_config, thread, [run]) as (fallback, primary):
        await primary.registry.create_webhook(hook, "whsec_c2VjcmV0")
        copy = CopyThread("t", {})
        await copy.unfinished().replay(primary, fallback)
        await fallback.registry.put_run(replace(run, lease_owner="exec-b"))  # a restart here
        _refused_once(primary, monkeypatch)
        with pytest.raises(psycopg.errors.LockNotAvailable):
            await copy.unfinished().replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert there.lease_owner == "exec-a"  # nothing went in
        await fallback.registry.put_run(
            replace(run, status=RunStatus.SUCCESS, lease_owner=None, finished_at=now)
        )
        await (copy.late() if late else copy).replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert (there.status, there.lease_owner) == (RunStatus.SUCCESS, None)
        assert await primary.registry.count_deliveries(DeliveryFilter()) == 1


@pytest.mark.postgres
async def test_a_failure_in_the_third_statement_of_deliveries_commits_nothing(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """500 ends (three statements of deliveries): the third fails; the copy's one
    transaction rolls back whole: no thread, no run, no delivery (probe; passes)."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now)
    runs = _ended_in_the_outage(500, now, digits=4)
    hook = WebhookRecord(
        "wh1", "u", "https://hooks.example.com/a", (WebhookEvent.RUN_SUCCEEDED,), now
    )
    config = create_postgres_checkpointer(pg_database)
    async with _copying(config, thread, runs) as (fallback, primary):
        await primary.registry.create_webhook(hook, "whsec_c2VjcmV0")
        registry: Any = primary.registry
        inserts = registry._run_end_inserts

        def broken(run: RunRecord) -> list[tuple[str, list[Any]]]:
            made = list(inserts(run))
            if run.run_id == "r0450":  # in the third statement
                made[0] = (made[0][0].replace("INSERT", "INSERT INTO nowhere"), made[0][1])
            return made

        monkeypatch.setattr(registry, "_run_end_inserts", broken)
        with pytest.raises(psycopg.Error):
            await CopyThread("t", {}).replay(primary, fallback)
        assert await primary.registry.get_thread("t", expired=True) is None
        assert await primary.registry.get_runs([r.run_id for r in runs]) == {}
        assert await primary.registry.count_deliveries(DeliveryFilter()) == 0


async def test_a_run_released_here_between_passes_is_still_ended(
    primary_config: CheckpointerConfig,
) -> None:
    """The first pass put r1 in under exec-a; a graceful stop here released it (lease
    cleared, still RUNNING) and the second pass copied it so: the primary has it with no
    lease, `leased` still says exec-a (a run without a lease is not recorded, nor is
    the old one forgotten). The next process ends it here; the third pass's `owners`
    (exec-a) differs from the primary's (none): left RUNNING, never announced. Passes
    at 55d9b9e^1."""
    now, thread, run = _in_flight()
    async with _copying(primary_config, thread, [run]) as (fallback, primary):
        copy = CopyThread("t", {})
        await copy.unfinished().replay(primary, fallback)
        await fallback.registry.release_runs("exec-a", ["r1"])
        await copy.unfinished().replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert there.lease_owner is None
        await fallback.registry.put_run(
            replace(run, status=RunStatus.SUCCESS, lease_owner=None, finished_at=now)
        )
        await copy.replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert there.status is RunStatus.SUCCESS


async def test_the_events_of_a_run_left_as_it_is_are_left_too(
    primary_config: CheckpointerConfig,
) -> None:
    """r1 copied in flight with event 1; exec-b took it over on the primary and ended it
    there (its own events 2, 3 up to the end). The copy leaves the run (not written,
    not announced) but still copies this replica's events of it: its seq 4 lands after
    exec-b's end in the primary's log (and a seq exec-b had not written yet would make
    exec-b's own write collide). Pre-existing (fails at 55d9b9e^1 too; the late copy's
    `_copy_events` does the same)."""
    now, thread, run = _in_flight()

    def event(seq: int, by: str) -> EventRecord:
        return EventRecord("r1", "t", seq, "status", {"by": by}, now)

    async with _copying(primary_config, thread, [run]) as (fallback, primary):
        await fallback.registry.store_events([event(1, "exec-a")])
        copied: dict[str, int] = {}
        copy = CopyThread("t", copied)
        await copy.unfinished().replay(primary, fallback)
        await primary.registry.store_events([event(2, "exec-b"), event(3, "exec-b")])
        await primary.registry.put_run(
            replace(run, status=RunStatus.SUCCESS, lease_owner=None, finished_at=now)
        )
        await fallback.registry.store_events([event(s, "exec-a") for s in (2, 3, 4)])
        await copy.unfinished().replay(primary, fallback)
        by = [(e.seq, e.payload["by"]) for e in await primary.registry.list_events("r1")]
        assert by == [(1, "exec-a"), (2, "exec-b"), (3, "exec-b")]


@pytest.mark.postgres
@pytest.mark.parametrize("ended", [4000, 5100])
async def test_a_thread_with_many_runs_ended_in_the_outage_is_copied(
    pg_database: str, ended: int
) -> None:
    """A thread whose outage ended 5,100 runs: the copy's deliveries of their ends went
    as one statement of 13 parameters a run (`_enqueue_run_ends`), past PostgreSQL's
    65,535 (libpq refuses it before sending, an OperationalError without a SQLSTATE:
    `is_backend_error` calls it an outage, so the drain stops on it at every recovery
    and the sync-back never ends). At 4,000 the statement's sum of 4,000 counts is past
    max_stack_depth (StatementTooComplex, 54001: refused, quarantined, left to a late
    copy after the switch). Before the merge each end was a statement of its own."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now)
    runs = _ended_in_the_outage(ended, now)
    config = create_postgres_checkpointer(pg_database)
    async with _copying(config, thread, runs) as (fallback, primary):
        try:
            await CopyThread("t", {}).replay(primary, fallback)
        except Exception as exc:
            pytest.fail(f"copy failed; taken for an outage: {is_backend_error(exc)}: {exc!r}")
        stored = await primary.registry.get_runs([r.run_id for r in runs])
        assert len(stored) == len(runs)


@pytest.mark.postgres
async def test_the_ends_of_many_runs_are_each_delivered_once(pg_database: str) -> None:
    """The deliveries of 450 ends, a third with a run's own URL (600 inserts: three
    statements of `_enqueue_run_ends`), all commit with the copy, and a copy again
    queues none twice."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now)
    runs = [
        RunRecord(
            f"r{n:05}", "t", "g", RunStatus.SUCCESS, user_id="u",
            config={RUN_WEBHOOK_KEY: "https://hooks.example.com/own"} if n % 3 == 0 else {},
            created_at=now + timedelta(milliseconds=n), finished_at=now,
        )
        for n in range(450)
    ]  # fmt: skip
    hook = WebhookRecord(
        "wh1", "u", "https://hooks.example.com/a", (WebhookEvent.RUN_SUCCEEDED,), now
    )
    config = create_postgres_checkpointer(pg_database)
    async with _copying(config, thread, runs) as (fallback, primary):
        await primary.registry.create_webhook(hook, "whsec_c2VjcmV0")
        for _ in range(2):
            await CopyThread("t", {}).replay(primary, fallback)
            assert await primary.registry.count_deliveries(DeliveryFilter()) == 600
            for run_id, deliveries in (("r00447", 2), ("r00448", 1)):  # own URL, none
                flt = DeliveryFilter(run_id=run_id)
                assert await primary.registry.count_deliveries(flt) == deliveries


async def test_an_on_time_copy_never_takes_an_end_back(
    primary_config: CheckpointerConfig,
) -> None:
    """`Registry.copy_thread` promises: a run the registry has finished keeps its end.
    A run in flight in the fallback (the copy) that another replica ended in the
    primary meanwhile (its lease lapsed during the drain, taken over and finished) is
    put back RUNNING under this replica's lease (the unfinished run's upsert has no
    guard; `put_run` had none either: not a regression of the merge)."""
    now, thread, run = _in_flight()
    async with _copying(primary_config, thread, [run]) as (fallback, primary):
        copied: dict[str, int] = {}
        await CopyThread("t", copied).unfinished().replay(primary, fallback)
        # Another replica's executor took it over and ended it.
        await primary.registry.put_run(
            replace(run, status=RunStatus.SUCCESS, lease_owner=None, finished_at=now)
        )
        await CopyThread("t", copied).replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert there.status is RunStatus.SUCCESS


async def test_an_on_time_copy_keeps_a_cancel_requested_there(
    primary_config: CheckpointerConfig,
) -> None:
    """A cancel requested on the primary (another replica) between the copy's two
    passes is reset by the second (`cancel_requested` copied as the fallback has it):
    the cancel is lost. Pre-existing (`put_run`'s plain upsert), kept by the merge."""
    _, thread, run = _in_flight()
    async with _copying(primary_config, thread, [run]) as (fallback, primary):
        copied: dict[str, int] = {}
        await CopyThread("t", copied).unfinished().replay(primary, fallback)
        assert await primary.registry.request_cancel("r1") is not None
        await CopyThread("t", copied).replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert there.cancel_requested


async def _paused_between_trips(
    primary: Backend, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold `copy_thread` after its first trip (the thread's row and runs locked), before
    the second: (reached, go on)."""
    registry: Any = primary.registry
    reached, go_on = asyncio.Event(), asyncio.Event()
    enqueue = registry._enqueue_run_ends

    async def paused(*args: Any, **kwargs: Any) -> int:
        reached.set()
        await go_on.wait()
        return int(await enqueue(*args, **kwargs))

    monkeypatch.setattr(registry, "_enqueue_run_ends", paused)
    return reached, go_on


async def _waiting_on_a_lock(database: str) -> bool:
    async with await psycopg.AsyncConnection.connect(PG_ADMIN_URL, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            [database],
        )
        row = await cur.fetchone()
        return bool(row and row[0])


@pytest.mark.postgres
@pytest.mark.parametrize("deletion", ["delete_thread", "purge_idle_thread"])
async def test_a_deletion_between_the_copys_trips_waits_and_wins(
    pg_database: str, monkeypatch: pytest.MonkeyPatch, deletion: str
) -> None:
    """A probe that passes: a deletion of the thread (on a row the first pass made) that
    comes between the copy's two trips waits for its commit, then deletes it all and
    leaves its tombstone: the thread stays deleted."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now)
    runs = [
        RunRecord(
            f"r{n}", "t", "g", RunStatus.SUCCESS, user_id="u", created_at=now, finished_at=now
        )
        for n in (1, 2)
    ]
    config = create_postgres_checkpointer(pg_database)
    async with _copying(config, thread, runs) as (fallback, primary):
        await primary.registry.put_thread(thread)  # the first pass's row
        reached, go_on = await _paused_between_trips(primary, monkeypatch)
        copy = asyncio.create_task(CopyThread("t", {}).replay(primary, fallback))
        await reached.wait()
        if deletion == "delete_thread":
            deleting = asyncio.create_task(primary.registry.delete_thread("t"))
        else:
            deleting = asyncio.create_task(primary.registry.purge_idle_thread("t", None))
        name = pg_database.rsplit("/", 1)[-1]
        await until(lambda: _waiting_on_a_lock(name))
        assert not deleting.done()
        go_on.set()
        await copy
        await deleting
        assert await primary.registry.get_thread("t", expired=True) is None
        assert await primary.registry.get_runs(["r1", "r2"]) == {}
        # A copy replayed again is refused by the tombstone.
        await CopyThread("t", {}).replay(primary, fallback)
        assert await primary.registry.get_thread("t", expired=True) is None


@pytest.mark.postgres
async def test_the_drain_gets_past_a_thread_with_many_runs_ended_in_the_outage(
    pg_database: str,
) -> None:
    """The drain as recovery runs it (`is_backend_error`): the copy of a thread whose
    outage ended 5,100 runs fails each time as if PostgreSQL were down, so the drain
    stops at it at every recovery and the replica never serves from the primary again
    (the journal keeps it all: nothing lost, nothing synced)."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now)
    runs = _ended_in_the_outage(5100, now)
    config = create_postgres_checkpointer(pg_database)
    async with _copying(config, thread, runs) as (fallback, primary):
        journal = Journal(100)
        journal.append(CopyThread("t", {}))
        for _ in range(2):  # two recoveries
            try:
                await journal.drain(
                    primary=primary,
                    fallback=fallback,
                    is_unreachable=is_backend_error,
                    on_synced=lambda: None,
                )
            except Exception as exc:
                assert not is_backend_error(exc), f"the drain stopped as at an outage: {exc!r}"
        assert len(await primary.registry.get_runs([r.run_id for r in runs])) == len(runs)


async def test_an_on_time_copy_leaves_a_run_another_executor_took_over(
    primary_config: CheckpointerConfig,
) -> None:
    """A run copied in flight by the first pass (exec-a), taken over on the primary by
    exec-b (exec-a's lease lapsed during the drain), ended in the fallback: the second
    pass ends it over exec-b's hold and announces it, where a late copy leaves a run
    another executor took over as it is (`_end_if_still_ours`). Pre-existing
    (`put_run`'s guard is on the status only), kept by the merge."""
    now, thread, run = _in_flight()
    async with _copying(primary_config, thread, [run]) as (fallback, primary):
        copied: dict[str, int] = {}
        await CopyThread("t", copied).unfinished().replay(primary, fallback)
        await primary.registry.put_run(replace(run, lease_owner="exec-b"))  # taken over
        await fallback.registry.put_run(
            replace(run, status=RunStatus.SUCCESS, lease_owner=None, finished_at=now)
        )
        await CopyThread("t", copied).replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert (there.status, there.lease_owner) == (RunStatus.RUNNING, "exec-b")
