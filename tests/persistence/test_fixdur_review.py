"""Review of `Merge fixdurable` (rv-fixdur): failing tests for defects found."""

from __future__ import annotations

import pickle
import sqlite3
import sys
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from code_hero.config import create_memory_checkpointer, create_sqlite_checkpointer
from code_hero.persistence.backends import open_backend
from code_hero.persistence.entries import CopyThread, DeleteThread, Leases
from code_hero.persistence.journal import Journal
from code_hero.persistence.outagefile import OutageFile, same_database
from code_hero.persistence.records import RunRecord, RunStatus, ThreadRecord, ThreadStatus
from tests.persistence.test_entries import RUN, one_running_run, primary_config
from tests.persistence.test_outagefile_fixes import MODULE, Note, _checkpoint

__all__ = ["primary_config"]  # the fixture, shared with test_entries

DB = "postgresql://db"


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


def test_a_file_of_another_schema_or_server_named_in_the_query_is_left_alone(
    tmp_path: Path,
) -> None:
    """`same_database` drops the whole query, but libpq takes the server and the schema
    from it too: `options=-csearch_path=...` (the way README and the tests name a schema),
    `host=` (a socket directory), `port=`, `dbname=`. Before the merge a file of another
    deployment (its own schema, same database) was left alone; now its outage writes are
    replayed into this one's tables."""
    theirs = "postgresql://app@db.local/prod?options=" + quote("-csearch_path=tenant_a")
    ours = "postgresql://app@db.local/prod?options=" + quote("-csearch_path=tenant_b")
    assert not same_database(theirs, ours)
    assert not same_database("postgresql:///prod?host=/run/a", "postgresql:///prod?host=/run/b")
    assert not same_database("postgresql:///prod?port=5433", "postgresql:///prod?port=5432")

    path = str(tmp_path / "fb.sqlite")
    store = OutageFile.claim(path, theirs)
    journal = Journal(100)
    journal.attach(store, {})
    journal.append(DeleteThread("tenant-a-thread"))
    store.close()  # tenant A's replica died in an outage
    other = OutageFile.claim(path, ours)
    try:
        assert other.data_path != path  # tenant A's file waits for tenant A's database
    finally:
        other.close()


def _held_thread(tmp_path: Path, thread_id: str) -> tuple[OutageFile, Journal, str]:
    """A file a dead process left holding an entry of `thread_id` this version cannot
    read (an entry class of another version), and a journal of limit 3 attached to it."""
    path = str(tmp_path / "fb.sqlite")
    store = OutageFile.claim(path, DB)
    Journal(100).attach(store, {})
    store.close()
    with sqlite3.connect(tmp_path / "fb.sqlite.entries") as conn:
        conn.execute(
            "INSERT INTO entries (thread_id, body) VALUES (?, ?)",
            (thread_id, pickle.dumps(("DeleteThread", {"thread_id": thread_id, "gone": 1}))),
        )
    conn.close()
    again = OutageFile.claim(path, DB)
    journal = Journal(3)
    journal.attach(again, {})
    return again, journal, path


def test_writes_queued_behind_a_held_entry_count_toward_the_journals_limit(
    tmp_path: Path,
) -> None:
    """The journal's limit keeps an outage from growing the process until the kernel
    kills it. A thread held behind an unreadable entry (an upgrade: held for good) takes
    its later writes into `held`, which `full` does not count: an outage's writes of
    that thread grow without bound and are never refused."""
    store, journal, _ = _held_thread(tmp_path, "t")
    try:
        assert journal.held_count == 1
        for _ in range(10):
            if journal.full:
                break
            journal.append(DeleteThread("t"))
        assert journal.full, f"{journal.held_count} entries held, the limit is 3"
    finally:
        store.close()


async def test_a_threads_copy_waits_for_its_checkpoint_held_behind_it(tmp_path: Path) -> None:
    """A thread born in the outage: its copy (`CopyThread`), then a checkpoint of its run
    holding a graph's class; the run ended on the fallback (the copy, still waiting,
    stands for that). The next process reads the copy but holds the checkpoint. The
    drain counts only the entries in memory behind the copy (`_deferring`): none, so it
    copies the finished run whole, and the primary has the run ended without the
    checkpoint it ended with (the journal's rule: a run's end goes in after its
    checkpoints), for good if the entry stays unreadable (an upgrade)."""
    path = str(tmp_path / "fb.sqlite")
    module = types.ModuleType(MODULE)
    Note.__module__ = MODULE
    module.Note = Note  # type: ignore[attr-defined]
    sys.modules[MODULE] = module
    try:
        store = OutageFile.claim(path, DB)
        journal = Journal(100)
        journal.attach(store, {})
        journal.append(CopyThread("t1", {}))
        journal.append(_checkpoint("t1", Note("the run's last state")))
        store.close()
        del sys.modules[MODULE]  # the next process, before its graphs load

        again = OutageFile.claim(path, DB)
        journal2 = Journal(100)
        journal2.attach(again, {})
        assert journal2.held_count == 1
        now = datetime.now(UTC)
        local = open_backend(create_memory_checkpointer())
        local.enforce_references = False
        async with (
            local as fallback,
            open_backend(create_sqlite_checkpointer(str(tmp_path / "p.sqlite"))) as primary,
        ):
            await fallback.registry.put_thread(
                ThreadRecord("t1", None, ThreadStatus.IDLE, {}, now, now)
            )
            await fallback.registry.put_run(
                RunRecord(RUN, "t1", "g", RunStatus.SUCCESS, created_at=now, finished_at=now)
            )
            await journal2.drain(
                primary=primary,
                fallback=fallback,
                is_unreachable=lambda exc: False,
                on_synced=lambda: None,
            )
            run = await primary.registry.get_run(RUN)
            assert run is None or not run.status.finished, "ended before its checkpoint"
        again.close()
    finally:
        sys.modules.pop(MODULE, None)
        Note.__module__ = __name__
