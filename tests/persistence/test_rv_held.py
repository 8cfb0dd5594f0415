"""Review of the fixheld merge: failing tests for what it leaves."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from code_hero.persistence.entries import CopyThread
from code_hero.persistence.journal import Journal
from code_hero.persistence.outagefile import OutageFile, same_database
from code_hero.persistence.records import RunRecord, RunStatus, ThreadRecord, ThreadStatus
from tests.persistence.test_entries import RUN, primary_config

__all__ = ["primary_config"]  # the fixture, shared with test_entries

DB = "postgresql://db"


def _url(options: str) -> str:
    return "postgresql://app@db.local/prod?options=" + quote(options)


def test_a_respelled_schema_option_keeps_the_files_writes() -> None:
    """libpq (and the server) take `-c search_path=x` and `-csearch_path=x` alike: one
    schema, so README's promise (a changed spelling keeps the file's writes) holds."""
    assert same_database(_url("-c search_path=tenant_a"), _url("-csearch_path=tenant_a"))
    assert same_database(_url("-csearch_path=tenant_a"), _url("--search_path=tenant_a"))


def test_another_server_option_beside_the_schema_keeps_the_files_writes() -> None:
    """A server option that names no database or schema (a statement timeout added to
    `options` beside the schema) is like `sslmode`: it must not strand the file."""
    assert same_database(
        _url("-c search_path=tenant_a"),
        _url("-c search_path=tenant_a -c statement_timeout=5s"),
    )


async def test_a_deleted_threads_runs_leave_the_leases(tmp_path: Path, primary_config: Any) -> None:
    """A copy-back puts a RUNNING run in the primary and records its lease (in memory
    and in the file's state). The thread is deleted: nothing can replay a copy of it
    any more, yet its lease stays, in memory and in the file, for every later process
    (`Leases` is never pruned but by a later copy of the same run)."""
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
        try:
            journal = Journal(100)
            journal.attach(store, {})
            copy = CopyThread("t", {}, refused=journal.refused_runs, leased=journal.leased_runs)
            journal.append(copy)
            await journal.entries[0].replay(primary, fallback)
            assert journal.leased_runs == {RUN: "exec-1"}
            await journal.drop_thread("t")
            assert RUN not in journal.leased_runs
            assert RUN not in (store.state("leased") or {})
        finally:
            store.close()


async def test_a_copy_never_puts_a_run_in_unfinished_without_its_lease_kept(
    tmp_path: Path, primary_config: Any
) -> None:
    """The journal's file cannot take the lease (its connection gone, as a full disk or
    an I/O error fails `set_state`): `_stored` logs and goes on, and the copy puts the
    RUNNING run in the primary anyway. After a kill the next process's late copy has no
    lease to end it by (the executor's end cleared the fallback row's), so the run stays
    RUNNING there until its lease lapses and another executor runs it again. The copy
    must not put it in unrecorded (raise, or leave the run for a later copy)."""
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
        copy = CopyThread("t", {}, refused=journal.refused_runs, leased=journal.leased_runs)
        journal.append(copy)
        store._conn.close()  # the file fails from here on (a real failing connection)
        try:
            await journal.entries[0].replay(primary, fallback)
        except Exception:
            pass
        again = OutageFile.claim(path, DB)
        try:
            kept = again.state("leased") or {}
            run = await primary.registry.get_run(RUN)
            assert run is None or kept.get(RUN) == "exec-1"
        finally:
            again.close()
