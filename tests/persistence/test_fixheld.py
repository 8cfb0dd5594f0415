"""A late copy (the journal's file replayed by the next process) ends a run by the lease
its copy-back put it in under, kept in the journal's file, whoever ended it on the
fallback; quarantined entries keep their place in the file and their thread's order."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from code_hero.persistence.entries import CopyThread, DeleteThread, FinishRun, Leases, PutCheckpoint
from code_hero.persistence.journal import Journal
from code_hero.persistence.outagefile import OutageFile
from code_hero.persistence.records import RunRecord, RunStatus, ThreadRecord, ThreadStatus
from tests.conftest import make_config
from tests.persistence.test_entries import RUN, one_running_run, primary_config
from tests.persistence.test_outagefile_fixes import DB, Flaky, _checkpoint, _claimed

__all__ = ["primary_config"]  # the fixture, shared with test_entries


def _copy(journal: Journal) -> CopyThread:
    """A thread's copy as the router journals it (sharing the journal's maps)."""
    return CopyThread("t", {}, refused=journal.refused_runs, leased=journal.leased_runs)


async def _drain(journal: Journal, primary: Any, fallback: Any) -> None:
    await journal.drain(
        primary=primary, fallback=fallback, is_unreachable=lambda exc: False, on_synced=lambda: None
    )


async def test_the_next_process_ends_a_run_its_copy_back_left_running(
    tmp_path: Path, primary_config: Any
) -> None:
    """A thread born in the outage, its run RUNNING under exec-1: the copy-back puts it
    in the primary so, then the process is killed before the copy leaves the file. The
    run ends on the fallback (the executor clears its lease as it ends it). The next
    process loads the file: its late copy ends the run in the primary, by the lease the
    file kept, and leaves alone a run another executor took over."""
    from code_hero.config import create_memory_checkpointer
    from code_hero.persistence.backends import open_backend

    path = str(tmp_path / "fb.sqlite")
    now = datetime.now(UTC)
    local = open_backend(create_memory_checkpointer())
    local.enforce_references = False
    async with local as fallback, open_backend(primary_config) as primary:
        await fallback.registry.put_thread(ThreadRecord("t", None, ThreadStatus.BUSY, {}, now, now))
        await fallback.registry.put_run(
            RunRecord(RUN, "t", "g", RunStatus.RUNNING, created_at=now, lease_owner="exec-1")
        )
        store, journal = _claimed(path)
        journal.append(_copy(journal))
        await journal.entries[0].replay(primary, fallback)  # the copy-back, then a kill
        store.close()
        run = await primary.registry.get_run(RUN)
        assert run is not None and run.lease_owner == "exec-1"
        await fallback.registry.finish_run(  # as RunExecutor ends a run
            RUN,
            ThreadStatus.IDLE,
            if_leased_by="exec-1",
            status=RunStatus.SUCCESS,
            output={"from": "outage"},
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )

        again = OutageFile.claim(path, DB)
        try:
            journal2 = Journal(100)
            journal2.attach(again, {})
            assert journal2.leased_runs == {RUN: "exec-1"}
            await _drain(journal2, primary, fallback)
            run = await primary.registry.get_run(RUN)
            assert run is not None
            assert (run.status, run.output) == (RunStatus.SUCCESS, {"from": "outage"})
            assert not journal2.leased_runs
        finally:
            again.close()


async def test_a_late_copy_leaves_a_run_another_executor_took_over(
    tmp_path: Path, primary_config: Any
) -> None:
    """The run the dead process's copy put in under exec-1 was claimed by exec-2 since
    (the dead lease lapsed): the late copy leaves it to exec-2."""
    from code_hero.config import create_memory_checkpointer
    from code_hero.persistence.backends import open_backend
    from code_hero.persistence.entries import Leases

    now = datetime.now(UTC)
    local = open_backend(create_memory_checkpointer())
    local.enforce_references = False
    async with local as fallback, open_backend(primary_config) as primary:
        for backend, owner in ((fallback, "exec-1"), (primary, "exec-2")):
            await backend.registry.put_thread(
                ThreadRecord("t", None, ThreadStatus.BUSY, {}, now, now)
            )
            await backend.registry.put_run(
                RunRecord(RUN, "t", "g", RunStatus.RUNNING, created_at=now, lease_owner=owner)
            )
        await fallback.registry.finish_run(
            RUN,
            ThreadStatus.IDLE,
            if_leased_by="exec-1",
            status=RunStatus.SUCCESS,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
        leased = Leases({RUN: "exec-1"})
        await CopyThread("t", {}, leased=leased).late().replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        assert run is not None and (run.status, run.lease_owner) == (RunStatus.RUNNING, "exec-2")


async def test_an_entry_quarantined_before_the_file_took_it_is_filed_quarantined(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The file refuses a thread's checkpoint (a full disk: it waits in the thread's
    backlog); the drain sends it to PostgreSQL, which refuses its value: quarantined.
    It is still owed to the file: once the file works again it goes in, marked
    quarantined, and the next process retries it. It left the backlog as it left the
    journal's head, and was never written: a kill lost it."""
    from code_hero.config import create_memory_checkpointer
    from code_hero.persistence.backends import open_backend

    path = str(tmp_path / "fb.sqlite")
    store, journal = _claimed(path)
    Flaky.refuse = True
    try:
        entry = _checkpoint("t1", Flaky())
        entry.config["configurable"]["checkpoint_ns"] = "poison\x00"  # PostgreSQL refuses it
        journal.append(entry)  # the file refuses it: acknowledged, in memory
        assert not journal.durable
        local = open_backend(create_memory_checkpointer())
        async with local as fallback, open_backend(make_config("postgres", request)) as primary:
            await _drain(journal, primary, fallback)
        assert len(journal) == 0 and len(journal.quarantine) == 1
        Flaky.refuse = False  # the file works again
        journal.append(DeleteThread("t2"))  # any thread's write: the backlog goes first
        assert journal.durable
    finally:
        Flaky.refuse = True
    store.close()
    again, journal2 = _claimed(path)
    try:
        assert [type(q.entry) for q in journal2.quarantine] == [PutCheckpoint]
        assert [type(e) for e in journal2.entries] == [DeleteThread]
    finally:
        again.close()


async def test_a_quarantined_entry_that_replays_leaves_its_threads_backlog(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An entry the file did not take waits in its thread's backlog, quarantined (as the
    drain refuses it, or as a held one read late goes): once it replays from the
    quarantine it leaves the backlog, and is not written to the file after it went in
    (the next process would replay it again)."""
    from code_hero.config import create_memory_checkpointer, create_sqlite_checkpointer
    from code_hero.persistence.backends import open_backend

    path = str(tmp_path / "fb.sqlite")
    store, journal = _claimed(path)
    Flaky.refuse = True
    try:
        # The file refuses a run's end (a value neither primary takes either)...
        journal.append(
            FinishRun(RUN, "t1", {"status": RunStatus.SUCCESS, "output": Flaky()}, "exec-1")
        )
        entry = _checkpoint("t1", "plain")
        entry.config["configurable"]["checkpoint_ns"] = "poison\x00"
        journal.append(entry)  # ... and this one waits behind it in the backlog
        async with (
            open_backend(create_memory_checkpointer()) as fallback,
            open_backend(make_config("postgres", request)) as refusing,
            open_backend(create_sqlite_checkpointer(str(tmp_path / "p.sqlite"))) as taking,
        ):
            await _drain(journal, refusing, fallback)
            assert len(journal.quarantine) == 2
            Flaky.refuse = False
            done, _ = await journal.retry_quarantined(
                primary=taking, fallback=fallback, is_unreachable=lambda exc: False
            )
            assert done == [entry], journal.quarantine[0].last_error
        journal.append(DeleteThread("t2"))  # the file works: any backlog goes first
    finally:
        Flaky.refuse = True
    store.close()
    again, journal2 = _claimed(path)
    try:
        assert [type(q.entry) for q in journal2.quarantine] == [FinishRun]
        assert [type(e) for e in journal2.entries] == [DeleteThread]
    finally:
        again.close()


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

        # The lease the dead process's copy put the run in under, as its file keeps it.
        leased = Leases({RUN: "exec-1"})
        await CopyThread("t", {}, leased=leased).late().replay(primary, fallback)

        run = await primary.registry.get_run(RUN)
        assert run is not None
        assert run.status is RunStatus.SUCCESS
        assert run.output == {"from": "outage"}
