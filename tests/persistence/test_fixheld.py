"""Fixes of the rv-fixdur review: a late copy ends a run by the lease its copy-back
put it in under, kept in the journal's file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from code_hero.persistence.entries import CopyThread
from code_hero.persistence.journal import Journal
from code_hero.persistence.outagefile import OutageFile
from code_hero.persistence.records import RunRecord, RunStatus, ThreadRecord, ThreadStatus
from tests.persistence.test_entries import RUN, primary_config

__all__ = ["primary_config"]  # the fixture, shared with test_entries

DB = "postgresql://db"


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
        store = OutageFile.claim(path, DB)
        journal = Journal(100)
        journal.attach(store, {})
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
