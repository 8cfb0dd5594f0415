"""Journal entries that copy registry state: on time, and late (the primary serves)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.config import (
    create_memory_checkpointer,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
)
from code_hero.errors import ConflictError
from code_hero.persistence.backends import Backend, open_backend
from code_hero.persistence.entries import (
    ChangeRun,
    CopyEvents,
    CopyThread,
    FinishRun,
    ReleaseEdit,
    ReleaseRun,
)
from code_hero.persistence.pg_backend import PostgresBackend
from code_hero.persistence.records import (
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.persistence.webhooks import DeliveryFilter, WebhookEvent, WebhookRecord
from tests.conftest import make_config
from tests.faults import until
from tests.pgtrips import count_pg_trips

RUN = "6f9d3c1e-6a4e-4f0e-9b1a-2d5c7e9f1a3b"


async def test_a_late_copy_adds_what_is_missing_and_replaces_nothing(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.BUSY, {"from": "outage"}, now, now)
    pending = RunRecord(RUN, "t", "g", RunStatus.PENDING, created_at=now)
    events = [EventRecord(RUN, "t", seq, "status", {"n": seq}, now) for seq in (1, 2)]
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(create_sqlite_checkpointer(str(tmp_path / "p.sqlite"))) as primary,
    ):
        await fallback.registry.put_thread(thread)
        await fallback.registry.put_run(pending)
        await fallback.registry.store_events(events)
        # The primary moved on after the switch-back: the run finished there.
        await primary.registry.put_thread(
            ThreadRecord("t", "u", ThreadStatus.IDLE, {"from": "primary"}, now, now)
        )
        await primary.registry.put_run(RunRecord(RUN, "t", "g", RunStatus.SUCCESS, created_at=now))

        await CopyThread("t", {}).late().replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        kept = await primary.registry.get_thread("t")
        assert run is not None and run.status is RunStatus.SUCCESS
        assert kept is not None and kept.metadata == {"from": "primary"}
        assert [e.seq for e in await primary.registry.list_events(RUN)] == [1, 2]

        # On time the copy is the truth of what the primary has unfinished, but never
        # takes back an end made there (another replica's, which the primary serves:
        # `Registry.copy_thread`).
        await CopyThread("t", {}).replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        assert run is not None and run.status is RunStatus.SUCCESS


async def test_a_late_copy_of_a_marked_thread_takes_the_mark_alone(primary_config: Any) -> None:
    """A deletion in an outage marks the fallback's row; the copy of the mark may be the
    one the primary refused (quarantined), the first drain having copied the row
    unmarked. Retried late, it replaced nothing: the deletion's last step found the
    row unmarked and left the thread (chaos seed 56's symptom). It takes the mark now,
    the mark alone, and never over a mark of another deletion."""
    now = datetime.now(UTC)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        thread = ThreadRecord("t", "u", ThreadStatus.IDLE, {"from": "outage"}, now, now)
        await fallback.registry.put_thread(thread)
        # The first drain's copy, moved on since on the primary.
        moved = replace(thread, status=ThreadStatus.BUSY, metadata={"from": "primary"})
        await primary.registry.put_thread(moved)
        before = await primary.registry.get_thread("t")
        mark = await fallback.registry.start_deletion("t")
        assert mark is not None
        token = mark.token

        await CopyThread("t", {}).late().replay(primary, fallback)
        assert await primary.registry.get_thread("t") is None  # marked: read as gone
        marked = await primary.registry.get_thread("t", expired=True)
        assert marked is not None and (marked.ttl_seconds, marked.deletion_token) == (0, token)
        unmarked = replace(marked, ttl_seconds=None, expires_at=None, deletion_token=None)
        assert unmarked == before  # nothing else replaced

        # A copy keeps a mark the row has: the row is put anew, marked by another (the
        # deletion's tombstone forgotten first: else the copy is refused, test_tombstones).
        await primary.registry.delete_thread("t")
        await primary.registry.forget_deleted_threads(now + timedelta(days=1), limit=10)
        assert await primary.registry.put_thread(replace(marked, deletion_token="another"))
        await CopyThread("t", {}).late().replay(primary, fallback)
        again = await primary.registry.get_thread("t", expired=True)
        assert again is not None and again.deletion_token == "another"


async def test_a_copy_of_a_thread_carries_an_edits_claim_and_a_late_copy_does_not(
    primary_config: Any,
) -> None:
    """An edit of a thread born in an outage claims the fallback's row; the switch back
    may fall inside the edit, and its release then reaches the primary: the copy takes
    the claim, so runs there wait for the edit. A late copy (after the switch) adds a
    missing row unclaimed: the edit's release went to the primary, not to this row."""
    now = datetime.now(UTC)
    until = now + timedelta(minutes=1)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        thread = ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now)
        await fallback.registry.put_thread(thread)
        assert await fallback.registry.claim_edit("t", until, seen=True) is None

        await CopyThread("t", {}).late().replay(primary, fallback)
        late = await primary.registry.get_thread("t")
        assert late is not None and late.edit_until is None
        # The primary without the row again (its tombstone forgotten: else the copy of a
        # deleted thread is refused, test_tombstones).
        await primary.registry.delete_thread("t")
        await primary.registry.forget_deleted_threads(now + timedelta(days=1), limit=10)

        await CopyThread("t", {}).replay(primary, fallback)
        with pytest.raises(ConflictError, match="being edited"):
            await primary.registry.admit_run(
                RunRecord(RUN, "t", "g", RunStatus.PENDING, created_at=now), reject_if_busy=True
            )
        await primary.registry.release_edit("t", until)  # the edit's, after the switch
        admitted, _ = await primary.registry.admit_run(
            RunRecord(RUN, "t", "g", RunStatus.PENDING, created_at=now), reject_if_busy=True
        )
        assert admitted is not None


async def test_a_late_mark_never_lands_on_a_thread_made_anew(primary_config: Any) -> None:
    """A deletion in an outage marked the fallback's row and its copy was quarantined;
    meanwhile another replica deleted the thread on the primary and a client made it
    anew under the id (a new row, unmarked). The late copy's mark landed on it: the
    new thread read as gone, and the deletion's last step deleted it. A row created at
    another time than the copy's is another thread: it takes no mark, from the retry nor
    from the deletion's last step (`FallbackRouter._carry_mark`: `put_thread(late=True)`)."""
    old, new = datetime.now(UTC) - timedelta(minutes=5), datetime.now(UTC)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await fallback.registry.put_thread(ThreadRecord("t", "u", ThreadStatus.IDLE, {}, old, old))
        mark = await fallback.registry.start_deletion("t")
        assert mark is not None
        token = mark.token
        made_anew = ThreadRecord("t", "u2", ThreadStatus.IDLE, {"new": True}, new, new)
        await primary.registry.put_thread(made_anew)

        await CopyThread("t", {}).late().replay(primary, fallback)  # the retry
        assert await primary.registry.get_thread("t") == made_anew
        marked = await fallback.registry.get_thread("t", expired=True)
        assert marked is not None
        await primary.registry.put_thread(marked, late=True)  # the last step's carry
        assert await primary.registry.get_thread("t") == made_anew
        assert await primary.registry.delete_thread("t", marked=token) == (False, 0)
        assert await primary.registry.get_thread("t") == made_anew


async def test_a_late_copy_keeps_the_outages_runs_on_a_row_made_since(
    primary_config: Any,
) -> None:
    """The retried copy of a thread born in the outage whose row the primary lacked: a
    run admitted there after the switch made the row (created_at now). The copy took
    that for a thread made anew, copied nothing and settled, and the fallback's copies
    were forgotten: the outage's run and its events were lost. A row's created_at
    cannot tell that row from one another replica made anew after a deletion, so the
    runs the primary lacks are copied (the mark alone keeps to its own row)."""
    old = datetime.now(UTC) - timedelta(minutes=5)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await fallback.registry.put_thread(ThreadRecord("t", "u", ThreadStatus.IDLE, {}, old, old))
        await fallback.registry.put_run(RunRecord(RUN, "t", "g", RunStatus.SUCCESS, created_at=old))
        await fallback.registry.store_events([EventRecord(RUN, "t", 1, "status", {}, old)])
        admitted, _ = await primary.registry.admit_run(
            RunRecord(str(uuid.uuid4()), "t", "g", RunStatus.PENDING, user_id="u"),
            reject_if_busy=False,
        )
        assert admitted is not None

        await CopyThread("t", {}).late().replay(primary, fallback)
        assert await primary.registry.get_run(RUN) is not None
        assert len(await primary.registry.list_events(RUN)) == 1


async def test_an_on_time_copy_keeps_a_mark_another_replica_made(primary_config: Any) -> None:
    """Replica A's copy-back took a thread born in its outage to the primary (its first
    drain), and replica B, on the primary, marked it for deletion. A's next copy of the
    thread, on time, wrote its own unmarked row over B's: B's last step found a row not
    its own and left the thread. The copy keeps a mark the row has (ttl 0 with it)."""
    old = datetime.now(UTC) - timedelta(minutes=5)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await fallback.registry.put_thread(ThreadRecord("t", "u", ThreadStatus.IDLE, {}, old, old))
        await CopyThread("t", {}).replay(primary, fallback)  # the first drain
        mark = await primary.registry.start_deletion("t")  # replica B
        assert mark is not None
        theirs = mark.token
        await fallback.registry.update_thread("t", metadata={"later": True})
        await CopyThread("t", {}).replay(primary, fallback)  # a later copy, on time

        there = await primary.registry.get_thread("t", expired=True)
        assert there is not None and (there.ttl_seconds, there.deletion_token) == (0, theirs)
        assert there.metadata == {"later": True}  # the rest is the copy's
        assert await primary.registry.get_thread("t") is None  # marked: read as gone
        assert await primary.registry.delete_thread("t", marked=theirs) == (True, 0)


async def test_an_on_time_copy_leaves_another_replicas_edit_claim(primary_config: Any) -> None:
    """Replica A's first drain copied a thread born in its outage; replica B, on the
    primary already, claims it for an edit; A's last drain replays a fresh copy of it
    (unclaimed on A's side). The copy wrote A's empty claim over B's, and runs were
    admitted while B's edit still wrote. A copy adds or extends a claim, never clears
    one; A's own edit, claimed and released in the outage, ends by its own entry
    (`ReleaseEdit`), which leaves a claim that is not its own."""
    now = datetime.now(UTC)
    theirs, ours = now + timedelta(minutes=1), now + timedelta(minutes=2)
    run = RunRecord(RUN, "t", "g", RunStatus.PENDING, created_at=now)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await fallback.registry.put_thread(ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now))
        await CopyThread("t", {}).replay(primary, fallback)  # A's first drain
        assert await primary.registry.claim_edit("t", theirs, seen=True) is None  # B's edit
        await CopyThread("t", {}).replay(primary, fallback)  # A's last drain
        with pytest.raises(ConflictError, match="being edited"):  # B's edit goes on
            await primary.registry.admit_run(run, reject_if_busy=True)
        await primary.registry.release_edit("t", theirs)

        # A's edit in the outage: its claim copied over, then its release; a copy taken
        # after the release leaves the claim, and the release's own entry ends it.
        assert await fallback.registry.claim_edit("t", ours, seen=True) is None
        await CopyThread("t", {}).replay(primary, fallback)
        await fallback.registry.release_edit("t", ours)
        await CopyThread("t", {}).replay(primary, fallback)
        with pytest.raises(ConflictError, match="being edited"):
            await primary.registry.admit_run(run, reject_if_busy=True)
        await ReleaseEdit("t", ours).replay(primary, fallback)
        # Replayed again, after B claimed anew: B's claim is not A's, and stays.
        assert await primary.registry.claim_edit("t", theirs, seen=True) is None
        await ReleaseEdit("t", ours).replay(primary, fallback)
        with pytest.raises(ConflictError, match="being edited"):
            await primary.registry.admit_run(run, reject_if_busy=True)
        await primary.registry.release_edit("t", theirs)
        admitted, _ = await primary.registry.admit_run(run, reject_if_busy=True)
        assert admitted is not None


async def test_a_runs_timeline_and_usage_survive_every_sync_back_entry(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=123456)
    later = now + timedelta(milliseconds=250)
    steps = (
        StepRecord("lead", "", now, later),
        StepRecord("expert", "team:1", later, None, "cancelled"),
    )
    thread = ThreadRecord("t", "u", ThreadStatus.BUSY, {}, now, now)
    born = RunRecord(
        RUN,
        "t",
        "g",
        RunStatus.RUNNING,
        created_at=now,
        input_tokens=5,
        output_tokens=7,
        steps=steps[:1],
    )
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(create_sqlite_checkpointer(str(tmp_path / "p.sqlite"))) as primary,
    ):
        # A run born in the outage is copied whole (CopyThread: put_run).
        await fallback.registry.put_thread(thread)
        await fallback.registry.put_run(born)
        await CopyThread("t", {}).replay(primary, fallback)
        assert await primary.registry.get_run(RUN) == born

        # A run in flight at the outage's start: its changes and its end (update_run,
        # finish_run) carry the timeline and usage fields.
        await ChangeRun(RUN, "t", {"steps": steps, "input_tokens": 11}).replay(primary, fallback)
        changed = await primary.registry.get_run(RUN)
        assert changed is not None and changed.steps == steps and changed.input_tokens == 11
        ended = {"status": "CANCELLED", "finished_at": later, "output_tokens": 9, "steps": steps}
        await FinishRun(RUN, "t", ended).replay(primary, fallback)
        final = await primary.registry.get_run(RUN)
        assert final is not None and final.status is RunStatus.CANCELLED
        assert (final.input_tokens, final.output_tokens, final.steps) == (11, 9, steps)


@asynccontextmanager
async def one_running_run(
    config: Any, owner: str, expires_at: datetime | None = None
) -> AsyncIterator[tuple[Backend, Backend]]:
    """A memory fallback, and a primary holding thread "t" with run RUN running, leased
    by `owner`."""
    now = datetime.now(UTC)
    local = open_backend(create_memory_checkpointer())
    local.enforce_references = False  # as a fallback: events of runs the primary has
    async with local as fallback, open_backend(config) as primary:
        await primary.registry.put_thread(ThreadRecord("t", None, ThreadStatus.BUSY, {}, now, now))
        await primary.registry.put_run(
            RunRecord(
                RUN, "t", "g", RunStatus.RUNNING, created_at=now,
                lease_owner=owner, lease_expires_at=expires_at,
            )
        )  # fmt: skip
        yield fallback, primary


async def test_a_release_journalled_in_an_outage_keeps_another_replicas_lease(
    tmp_path: Path,
) -> None:
    """A run released for an outage (its executor could not reach the primary) may be
    taken over meanwhile by a replica that could: the replayed release clears only the
    releasing replica's own lease. As a plain change of fields it cleared the other's,
    and a third executor could claim the run while it still ran there."""
    until = datetime.now(UTC) + timedelta(minutes=5)
    sqlite = create_sqlite_checkpointer(str(tmp_path / "p.sqlite"))
    async with one_running_run(sqlite, "replica-b", until) as (fallback, primary):
        await ReleaseRun(RUN, "t", "replica-a").replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        assert run is not None and (run.lease_owner, run.lease_expires_at) == ("replica-b", until)

        await ReleaseRun(RUN, "t", "replica-b").replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        assert run is not None and (run.lease_owner, run.lease_expires_at) == (None, None)


@pytest.fixture(params=["sqlite", "postgres"])
def primary_config(request: pytest.FixtureRequest) -> object:
    return make_config(request.param, request)


async def test_a_change_and_end_journalled_in_an_outage_leave_another_replicas_run(
    primary_config: object,
) -> None:
    """A run in flight when its replica lost the primary may be taken over (its lease
    lapsed there) and ended by a replica that could reach it. The replayed change and
    end leave that alone: as plain updates they made the run RUNNING again (claimed a
    third time) and replaced the other replica's end with the journalled one."""
    now = datetime.now(UTC)
    lapsed, until = now - timedelta(minutes=1), now + timedelta(minutes=5)
    later = until + timedelta(minutes=5)
    async with one_running_run(primary_config, "replica-a", lapsed) as (fallback, primary):
        renewed = ChangeRun(RUN, "t", {"lease_expires_at": later}, "replica-a")
        running = ChangeRun(RUN, "t", {"status": "RUNNING", "started_at": now}, "replica-a")
        ended = FinishRun(RUN, "t", {"status": "ERROR", "error": "a", "finished_at": now})

        # Replica B takes the lapsed run over: A's changes leave B's lease.
        await primary.registry.claim_runs("replica-b", now=now, until=until, limit=1)
        await renewed.replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        assert run is not None and (run.lease_owner, run.lease_expires_at) == ("replica-b", until)

        # B ends it: neither A's changes nor A's end replace that end.
        await primary.registry.finish_run(
            RUN, ThreadStatus.IDLE, status=RunStatus.SUCCESS, output={"by": "b"},
            finished_at=now, lease_owner=None, lease_expires_at=None,
        )  # fmt: skip
        for entries in ((running, renewed), (ended,)):
            for entry in entries:
                await entry.replay(primary, fallback)
            run = await primary.registry.get_run(RUN)
            assert run is not None and run.status is RunStatus.SUCCESS
            assert (run.output, run.error) == ({"by": "b"}, None)
            assert (run.lease_owner, run.lease_expires_at) == (None, None)
            thread = await primary.registry.get_thread("t")
            assert thread is not None and thread.status is ThreadStatus.IDLE
            claimed = await primary.registry.claim_runs("c", now=now, until=until, limit=1)
            assert claimed == []


async def test_a_change_journalled_in_an_outage_leaves_a_run_another_replica_released(
    primary_config: object,
) -> None:
    """Replica B took the run over while A could not reach the primary, and released it
    (B drained): no one leases it and it is claimable. A's replayed renewal set a lease
    expiry with no owner on it, which held every claim off until it passed, and A's
    other changes applied to a run A no longer executed."""
    now = datetime.now(UTC)
    lapsed, until = now - timedelta(minutes=1), now + timedelta(minutes=5)
    later = until + timedelta(minutes=5)
    async with one_running_run(primary_config, "replica-a", lapsed) as (fallback, primary):
        await primary.registry.claim_runs("replica-b", now=now, until=until, limit=1)
        await primary.registry.release_runs("replica-b", [RUN])

        await ChangeRun(RUN, "t", {"lease_expires_at": later}, "replica-a").replay(
            primary, fallback
        )
        await ChangeRun(RUN, "t", {"input_tokens": 11}, "replica-a").replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        assert run is not None and (run.lease_owner, run.lease_expires_at) == (None, None)
        assert run.input_tokens == 0
        claimed = await primary.registry.claim_runs("replica-c", now=now, until=until, limit=1)
        assert [r.run_id for r in claimed] == [RUN]


@pytest.mark.parametrize("then", ["running", "released"])
async def test_an_end_journalled_in_an_outage_is_left_to_the_replica_that_took_over(
    primary_config: object, then: str
) -> None:
    """A ran the run to its end while it could not reach the primary; B took it over
    meanwhile (A's lease lapsed there). The run B executes records B's end: A's replayed
    end replaced it while B still ran it (B's end then overwrote A's: two ends, and the
    thread IDLE while B ran). Released by B, the run is left claimable: whoever claims
    it resumes it from its last checkpoint and records its end, once."""
    now = datetime.now(UTC)
    lapsed, until = now - timedelta(minutes=1), now + timedelta(minutes=5)
    ended = {"status": "ERROR", "error": "a", "finished_at": now, "lease_owner": None}
    async with one_running_run(primary_config, "replica-a", lapsed) as (fallback, primary):
        await primary.registry.claim_runs("replica-b", now=now, until=until, limit=1)
        if then == "released":
            await primary.registry.release_runs("replica-b", [RUN])

        last = (EventRecord(RUN, "t", 1, "status", {"status": "ERROR", "error": "a"}, now),)
        await FinishRun(RUN, "t", ended, "replica-a", last).replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        assert run is not None and run.status is RunStatus.RUNNING and run.error is None
        # A's last events go with its end: the log has none of them (B numbers on from 1).
        assert await primary.registry.list_events(RUN) == []
        thread = await primary.registry.get_thread("t")
        assert thread is not None and thread.status is ThreadStatus.BUSY
        assert run.lease_owner == ("replica-b" if then == "running" else None)
        owner = "replica-b"
        if then == "released":
            owner = "replica-c"
            claimed = await primary.registry.claim_runs(owner, now=now, until=until, limit=1)
            assert [r.run_id for r in claimed] == [RUN]

        final, _ = await primary.registry.finish_run(
            RUN, ThreadStatus.IDLE, if_unfinished=True, if_leased_by=owner,
            status=RunStatus.SUCCESS, finished_at=now, lease_owner=None, lease_expires_at=None,
        )  # fmt: skip
        assert final is not None and (final.status, final.error) == (RunStatus.SUCCESS, None)


async def test_an_outage_run_whose_lease_lapsed_untaken_gets_its_changes_and_one_end(
    primary_config: object,
) -> None:
    """No replica took the run over (its lease lapsed, still A's): A executed it all
    along, so every change A journalled applies, and its end, once."""
    now = datetime.now(UTC)
    lapsed, later = now - timedelta(minutes=1), now + timedelta(minutes=5)
    ended = {"status": "SUCCESS", "output": {"by": "a"}, "finished_at": now}
    async with one_running_run(primary_config, "replica-a", lapsed) as (fallback, primary):
        renewed = ChangeRun(RUN, "t", {"lease_expires_at": later}, "replica-a")
        tokens = ChangeRun(RUN, "t", {"input_tokens": 11}, "replica-a")
        for entry in (renewed, tokens):
            await entry.replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        assert run is not None and (run.lease_expires_at, run.input_tokens) == (later, 11)

        last = tuple(EventRecord(RUN, "t", seq, "status", {"n": seq}, now) for seq in (1, 2))
        end = FinishRun(RUN, "t", {**ended, "lease_owner": None, "lease_expires_at": None},
                        "replica-a", last)  # fmt: skip
        await end.replay(primary, fallback)
        assert await primary.registry.list_events(RUN) == list(last)
        final = await primary.registry.get_run(RUN)
        assert final is not None and (final.status, final.output) == (
            RunStatus.SUCCESS,
            {"by": "a"},
        )
        assert (final.input_tokens, final.lease_owner) == (11, None)
        thread = await primary.registry.get_thread("t")
        assert thread is not None and thread.status is ThreadStatus.IDLE
        # Replayed again (a recovery cut short after it), it finds the run ended.
        assert await primary.registry.finish_run(
            RUN, ThreadStatus.IDLE, if_unfinished=True, if_leased_by="replica-a", **ended
        ) == (None, False)
        await end.replay(primary, fallback)
        assert await primary.registry.get_run(RUN) == final
        assert await primary.registry.list_events(RUN) == list(last)


@pytest.mark.parametrize("then", ["kept", "taken over", "released"])
async def test_events_journalled_in_an_outage_are_copied_while_their_lease_holds(
    primary_config: object, then: str
) -> None:
    """A stored events of its run in the fallback, numbered on from what the primary
    had; B took the run over meanwhile (A's lease lapsed there) and numbers its own on
    from there too. A's copied events took B's seqs (B's writer fenced, or its end's
    events skipped as stored) or followed B's end. Copied now only while A holds the
    run: released by B, the next claimer numbers on from what the primary has."""
    now = datetime.now(UTC)
    lapsed, until = now - timedelta(minutes=1), now + timedelta(minutes=5)
    async with one_running_run(primary_config, "replica-a", lapsed) as (fallback, primary):
        mine = [EventRecord(RUN, "t", seq, "custom", {"by": "a"}, now) for seq in (1, 2)]
        await fallback.registry.store_events(mine)
        if then != "kept":
            await primary.registry.claim_runs("replica-b", now=now, until=until, limit=1)
        if then == "released":
            await primary.registry.release_runs("replica-b", [RUN])

        await CopyEvents(RUN, "t", {}, "replica-a").replay(primary, fallback)
        if then == "kept":  # A executed it all along: its events are the run's
            assert await primary.registry.list_events(RUN) == mine
            return
        assert await primary.registry.list_events(RUN) == []
        theirs = [EventRecord(RUN, "t", 1, "status", {"status": "RUNNING"}, now)]
        await primary.registry.store_events(theirs)  # B's, or the next claimer's
        assert await primary.registry.list_events(RUN) == theirs


@pytest.mark.parametrize("then", ["kept", "taken over", "released"])
async def test_a_cancel_journalled_after_its_end_reaches_the_run_wherever_it_went(
    primary_config: object, then: str
) -> None:
    """A cancelled A's run in an outage (no flag on its row: A stopped it at once), and
    journalled its end then the cancel flag with no owner. Still A's (its lease lapsed,
    untaken), the run ends CANCELLED once and the flag changes nothing after; taken over
    by B, the end is left and the flag reaches B's renewal; released, claim_cancelled
    takes it. Replayed twice (a recovery cut short), nothing changes."""
    now = datetime.now(UTC)
    lapsed, until = now - timedelta(minutes=1), now + timedelta(minutes=5)
    ended = {"status": "CANCELLED", "finished_at": now, "input_tokens": 11,
             "lease_owner": None, "lease_expires_at": None}  # fmt: skip
    entries = (FinishRun(RUN, "t", ended, "replica-a"),
               ChangeRun(RUN, "t", {"cancel_requested": True}))  # fmt: skip
    async with one_running_run(primary_config, "replica-a", lapsed) as (fallback, primary):
        if then != "kept":
            await primary.registry.claim_runs("replica-b", now=now, until=until, limit=1)
        if then == "released":
            await primary.registry.release_runs("replica-b", [RUN])
        for _ in range(2):
            for entry in entries:
                await entry.replay(primary, fallback)
            run = await primary.registry.get_run(RUN)
            thread = await primary.registry.get_thread("t")
            assert run is not None and thread is not None
            if then == "kept":
                assert (run.status, run.input_tokens, run.lease_owner) == (
                    RunStatus.CANCELLED, 11, None,
                )  # fmt: skip
                assert thread.status is ThreadStatus.IDLE
                continue
            assert (run.status, run.cancel_requested, run.input_tokens) == (
                RunStatus.RUNNING, True, 0,
            )  # fmt: skip
            assert run.lease_owner == ("replica-b" if then == "taken over" else None)
            assert thread.status is ThreadStatus.BUSY
        if then == "taken over":
            held = await primary.registry.renew_leases("replica-b", [RUN], until)
            assert [(r.run_id, r.cancel_requested) for r in held] == [(RUN, True)]
        elif then == "released":
            claimed = await primary.registry.claim_cancelled("replica-c", now=now, until=until)
            assert [r.run_id for r in claimed] == [RUN]
        else:
            assert await primary.registry.claim_cancelled("c", now=now, until=until) == []
            assert await primary.registry.claim_runs("c", now=now, until=until, limit=1) == []


async def test_a_change_journalled_in_an_outage_applies_to_its_own_run(tmp_path: Path) -> None:
    until = datetime.now(UTC) + timedelta(minutes=5)
    sqlite = create_sqlite_checkpointer(str(tmp_path / "p.sqlite"))
    async with one_running_run(sqlite, "replica-a") as (fallback, primary):
        await ChangeRun(RUN, "t", {"lease_expires_at": until}, "replica-a").replay(
            primary, fallback
        )
        await ChangeRun(RUN, "t", {"cancel_requested": True}).replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        assert run is not None and (run.lease_expires_at, run.cancel_requested) == (until, True)


@pytest.mark.parametrize("entry", ["finish", "release"])
async def test_the_end_of_a_run_gone_with_its_thread_purges_what_it_wrote(
    primary_config: object, entry: str
) -> None:
    """A run outlived its thread's deletion (its rows went under it) and ended or was
    released in an outage: its executor learnt that from the fallback, so it never
    purged the checkpoints it wrote after the deletion. The replayed entry finds the run
    gone: they go, unless the thread has a row again (made anew under the id)."""
    now = datetime.now(UTC)
    ended = {"status": "SUCCESS", "finished_at": now, "lease_owner": None}
    replayed = {
        "finish": FinishRun(RUN, "t", ended, "replica-a"),
        "release": ReleaseRun(RUN, "t", "replica-a"),
    }[entry]
    config: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    async with one_running_run(primary_config, "replica-a") as (fallback, primary):
        await primary.registry.delete_thread("t")
        await primary.saver.aput(config, empty_checkpoint(), {}, {})  # written after
        await replayed.replay(primary, fallback)
        assert await primary.count_checkpoints("t") == 0

        # A thread made anew under the id (after the deletion) keeps its checkpoints.
        anew = datetime.now(UTC)
        assert await primary.registry.put_thread(
            ThreadRecord("t", None, ThreadStatus.IDLE, {}, anew, anew)
        )
        await primary.saver.aput(config, empty_checkpoint(), {}, {})
        await replayed.replay(primary, fallback)
        assert await primary.count_checkpoints("t") == 1


@pytest.mark.parametrize("then", ["as copied", "taken over", "ended there"])
async def test_a_late_copy_ends_a_run_only_as_an_earlier_copy_left_it(
    primary_config: Any, then: str
) -> None:
    # A copy-back cut short by a kill left the run RUNNING under its executor's lease in
    # the primary; the fallback saw it end. The next process's copy (late) ends it there,
    # unless another executor took it over or it ended there since.
    now = datetime.now(UTC)
    async with one_running_run(primary_config, "exec-1") as (fallback, primary):
        await fallback.registry.put_thread(ThreadRecord("t", None, ThreadStatus.IDLE, {}, now, now))
        await fallback.registry.put_run(
            RunRecord(
                RUN, "t", "g", RunStatus.SUCCESS, output={"from": "outage"}, created_at=now,
                finished_at=now, lease_owner="exec-1",
            )
        )  # fmt: skip
        if then == "taken over":
            await primary.registry.put_run(
                RunRecord(RUN, "t", "g", RunStatus.RUNNING, created_at=now, lease_owner="exec-2")
            )
        elif then == "ended there":
            await primary.registry.put_run(
                RunRecord(RUN, "t", "g", RunStatus.ERROR, created_at=now, lease_owner="exec-2")
            )
        await CopyThread("t", {}).late().replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        assert run is not None
        expected = {
            "as copied": RunStatus.SUCCESS,
            "taken over": RunStatus.RUNNING,
            "ended there": RunStatus.ERROR,
        }[then]
        assert run.status is expected
        assert (run.output == {"from": "outage"}) is (then == "as copied")


def _outage_thread(now: datetime) -> tuple[ThreadRecord, list[RunRecord], list[EventRecord]]:
    """A thread born in an outage: two runs that ended (r1, r2), one in flight (r3) under
    `exec-1`'s lease, three events each."""
    thread = ThreadRecord("t", "u", ThreadStatus.BUSY, {}, now, now)
    runs = [
        RunRecord(
            f"r{n}", "t", "g", status, user_id="u", created_at=now + timedelta(seconds=n),
            finished_at=None if status is RunStatus.RUNNING else now, lease_owner=owner,
        )
        for n, status, owner in (
            (1, RunStatus.SUCCESS, None),
            (2, RunStatus.ERROR, None),
            (3, RunStatus.RUNNING, "exec-1"),
        )
    ]  # fmt: skip
    events = [
        EventRecord(r.run_id, "t", seq, "status", {"n": seq}, now)
        for r in runs
        for seq in (1, 2, 3)
    ]
    return thread, runs, events


async def _in_the_fallback(
    fallback: Backend, thread: ThreadRecord, runs: list[RunRecord], events: list[EventRecord]
) -> None:
    await fallback.registry.put_thread(thread)
    for run in runs:
        await fallback.registry.put_run(run)
    await fallback.registry.store_events(events)


async def _hooks(primary: Backend) -> None:
    """A webhook on every run's end, of user u."""
    events = (WebhookEvent.RUN_SUCCEEDED, WebhookEvent.RUN_FAILED)
    hook = WebhookRecord("wh1", "u", "https://hooks.example.com/a", events, datetime.now(UTC))
    await primary.registry.create_webhook(hook, "whsec_c2VjcmV0")


async def _deliveries(primary: Backend) -> list[tuple[str | None, str]]:
    page = await primary.registry.list_deliveries(DeliveryFilter(), first=100)
    return sorted((d.run_id, d.event.value) for d in page.items)


@pytest.mark.postgres
async def test_an_on_time_copy_is_two_round_trips_on_postgresql(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread born in an outage copied on time, its row, runs and events: BEGIN, the
    row, its tombstone's look and the runs' statuses in one trip, the rest with the
    COMMIT in the next (were two for the row, one or two a run and one a run's events:
    seven a thread of one run, each copied twice, the copy-back's bound, issue 15)."""
    now = datetime.now(UTC)
    thread, runs, events = _outage_thread(now)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(create_postgres_checkpointer(pg_database)) as primary,
    ):
        await _in_the_fallback(fallback, thread, runs, events)
        await _hooks(primary)
        assert isinstance(primary, PostgresBackend)
        pool = primary.pool

        async def settled() -> bool:  # no connection added meanwhile (its set-up trip)
            stats = pool.get_stats()
            return bool(stats["pool_size"] == stats.get("pool_available", 0))

        await until(settled)
        copied: dict[str, int] = {}
        trips = count_pg_trips(monkeypatch)
        await CopyThread("t", copied).replay(primary, fallback)
        assert len(trips) <= 2
        monkeypatch.undo()
        assert copied == {"r1": 3, "r2": 3, "r3": 3}
        stored = await primary.registry.get_runs(["r1", "r2", "r3"])
        assert {r.run_id: r.status for r in stored.values()} == {r.run_id: r.status for r in runs}
        for run in runs:
            assert [e.seq for e in await primary.registry.list_events(run.run_id)] == [1, 2, 3]
        assert await _deliveries(primary) == [("r1", "RUN_SUCCEEDED"), ("r2", "RUN_FAILED")]


async def test_an_on_time_copy_leaves_an_end_made_there_and_announces_each_end_once(
    primary_config: Any,
) -> None:
    """The copy of a thread born in an outage in one transaction keeps `put_run`'s rules:
    a run another replica ended meanwhile keeps that end and is not announced again,
    a run in flight goes in as the fallback has it, an end announced once however often
    the copy is replayed, and each event stored once."""
    now = datetime.now(UTC)
    thread, runs, events = _outage_thread(now)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await _in_the_fallback(fallback, thread, runs, events)
        await _hooks(primary)
        copied: dict[str, int] = {}
        await CopyThread("t", copied).unfinished().replay(primary, fallback)
        assert await primary.registry.get_runs(["r1", "r2"]) == {}
        assert copied == {"r3": 3}
        # Another replica ends r1 meanwhile (r1 is in the primary: a late copy's, say).
        await primary.registry.put_run(replace(runs[0], status=RunStatus.ERROR, error="b"))
        for _ in range(2):
            await CopyThread("t", copied).replay(primary, fallback)
        stored = await primary.registry.get_runs(["r1", "r2", "r3"])
        assert stored["r1"].status is RunStatus.ERROR and stored["r1"].error == "b"
        assert stored["r2"].status is RunStatus.ERROR
        assert stored["r3"].status is RunStatus.RUNNING and stored["r3"].lease_owner == "exec-1"
        assert await _deliveries(primary) == [("r2", "RUN_FAILED")]
        for run in runs:
            assert [e.seq for e in await primary.registry.list_events(run.run_id)] == [1, 2, 3]


async def test_an_on_time_copy_brings_events_past_its_transactions_page(
    primary_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction takes a page of events in all (memory stays bounded); the rest go
    after it, a page at a time, each once."""
    monkeypatch.setattr("code_hero.persistence.entries._COPY_PAGE", 4)
    now = datetime.now(UTC)
    thread, runs, events = _outage_thread(now)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await _in_the_fallback(fallback, thread, runs, events)
        more = [EventRecord("r2", "t", seq, "status", {"n": seq}, now) for seq in range(4, 11)]
        await fallback.registry.store_events(more)
        copied: dict[str, int] = {}
        await CopyThread("t", copied).replay(primary, fallback)
        assert copied == {"r1": 3, "r2": 10, "r3": 3}
        seqs = {
            r.run_id: [e.seq for e in await primary.registry.list_events(r.run_id)] for r in runs
        }
        assert seqs == {"r1": [1, 2, 3], "r2": list(range(1, 11)), "r3": [1, 2, 3]}


async def test_a_tombstone_refuses_an_on_time_copy_whole(primary_config: Any) -> None:
    """Another replica deleted the thread since this copy's creation: nothing of it goes
    in, not its row, runs or events."""
    now = datetime.now(UTC)
    thread, runs, events = _outage_thread(now)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await _in_the_fallback(fallback, thread, runs, events)
        await primary.registry.put_thread(thread)
        await primary.registry.delete_thread("t")  # its tombstone
        await CopyThread("t", {}).replay(primary, fallback)
        assert await primary.registry.get_thread("t", expired=True) is None
        assert await primary.registry.get_runs(["r1", "r2", "r3"]) == {}
        assert await primary.registry.list_events("r1") == []
