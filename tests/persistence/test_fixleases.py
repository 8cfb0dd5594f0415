"""The fixleases branch: the schema of `options` as the server reads it; a lease kept
in the file before its run goes in; the leases pruned."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.persistence.entries import CopyThread
from code_hero.persistence.journal import Journal
from code_hero.persistence.outagefile import OutageFile, same_database
from code_hero.persistence.records import RunRecord, RunStatus, ThreadRecord, ThreadStatus
from tests.persistence.test_entries import RUN, primary_config

__all__ = ["primary_config"]  # the fixture, shared with test_entries

DB = "postgresql://db"


def _url(options: str) -> str:
    return "postgresql://app@db.local/prod?options=" + quote(options)


def test_the_schema_compares_as_postgresql_folds_it() -> None:
    """Unquoted names fold to lower case, quoted ones do not; the setting's name is
    case-insensitive; spaces (escaped, as libpq takes them) around commas do not count."""
    assert same_database(_url("-c SEARCH_PATH=Tenant_A"), _url("-c search_path=tenant_a"))
    assert same_database(_url(r"-c search_path=a,\ b"), _url("-c search_path=a,b"))
    assert same_database(_url('-c search_path="T"'), _url('-c search_path="T"'))
    assert not same_database(_url('-c search_path="T"'), _url("-c search_path=t"))
    assert not same_database(_url("-c search_path=a"), _url("-c search_path=b"))
    assert not same_database(_url("-c search_path=a"), _url(""))
    assert same_database(_url("-c statement_timeout=5s"), _url(""))
    # PostgreSQL (a UTF-8 database) folds only ASCII letters: `Écoles` is schema
    # "Écoles", not "écoles" (SELECT nspname after CREATE SCHEMA Écoles_B: Écoles_b).
    assert not same_database(_url("-c search_path=Écoles"), _url("-c search_path=écoles"))
    assert same_database(_url("-c search_path=Écoles"), _url('-c search_path="Écoles"'))


async def test_a_lease_the_file_failed_to_keep_is_saved_by_the_retry(
    tmp_path: Path, primary_config: Any
) -> None:
    """The copy that could not save the run's lease raised, the run out of the primary;
    its retry, the file working again, saves the lease and then puts the run in (a
    lease left in memory from the failed try must not pass for saved)."""
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
        conn = store._conn
        store._conn = sqlite3.connect(":memory:")  # no state table: set_state fails
        with pytest.raises(sqlite3.Error):
            await copy.replay(primary, fallback)
        assert await primary.registry.get_run(RUN) is None
        store._conn.close()
        store._conn = conn  # the file works again
        try:
            await copy.replay(primary, fallback)
            assert store.state("leased") == {RUN: "exec-1"}
            assert await primary.registry.get_run(RUN) is not None
        finally:
            store.close()


async def test_a_journal_without_a_file_keeps_its_leases_in_memory(primary_config: Any) -> None:
    from code_hero.config import create_memory_checkpointer
    from code_hero.persistence.backends import open_backend

    now = datetime.now(UTC)
    local = open_backend(create_memory_checkpointer())
    local.enforce_references = False
    async with local as fallback, open_backend(primary_config) as primary:
        await fallback.registry.put_thread(ThreadRecord("t", None, ThreadStatus.BUSY, {}, now, now))
        await fallback.registry.put_run(
            RunRecord(RUN, "t", "g", RunStatus.RUNNING, created_at=now, lease_owner="exec-1")
        )
        journal = Journal(100)
        copy = CopyThread("t", {}, refused=journal.refused_runs, leased=journal.leased_runs)
        await copy.replay(primary, fallback)
        assert journal.leased_runs == {RUN: "exec-1"}
        assert await primary.registry.get_run(RUN) is not None


@pytest.mark.parametrize("quarantined", [False, True])
async def test_a_switch_back_with_nothing_left_forgets_the_leases(
    primary_config: CheckpointerConfig, quarantined: bool
) -> None:
    """Nothing pending and nothing quarantined after the switch back: no loaded copy can
    need a lease, the map empties; a quarantined entry keeps it."""
    from langgraph.checkpoint.base import empty_checkpoint

    from code_hero.gateway import Gateway, GatewaySettings
    from code_hero.persistence.entries import PutCheckpoint
    from code_hero.persistence.journal import Quarantined

    settings = GatewaySettings(checkpointer=primary_config)
    async with Gateway(replace(settings, sweep_interval=None)) as gw:
        router = gw.manager.router
        router.fail_primary(ConnectionRefusedError("refused"))
        router.journal.leased_runs.record(RUN, "exec-1", "t")
        if quarantined:
            config = {"configurable": {"thread_id": "t", "checkpoint_ns": "refused"}}
            entry = PutCheckpoint(config, empty_checkpoint(), {}, {})  # type: ignore[arg-type]
            router.journal.quarantine.append(Quarantined(entry, 1, "refused"))
        assert await router.probe(router.primary)
        assert await router.recover()
        assert router.journal.leased_runs == ({RUN: "exec-1"} if quarantined else {})


def test_a_lease_the_file_keeps_failing_to_save_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy whose lease cannot be saved is retried at every probe while the disk is
    full: one ERROR says so, not one per try; the file working again, the next failure
    is told again."""
    store = OutageFile.claim(str(tmp_path / "fb.sqlite"), DB)
    journal = Journal(100)
    journal.attach(store, {})
    conn = store._conn
    store._conn = sqlite3.connect(":memory:")  # no state table: set_state fails
    try:
        with caplog.at_level("DEBUG", logger="code_hero.persistence.journal"):
            for _ in range(3):
                with pytest.raises(sqlite3.Error):
                    journal.leased_runs.record(RUN, "exec-1", "t")
            errors = [r for r in caplog.records if r.levelname == "ERROR"]
            assert len(errors) == 1, [r.getMessage() for r in errors]
            store._conn.close()
            store._conn = conn  # the file works again
            journal.leased_runs.record(RUN, "exec-1", "t")
            assert store.state("leased") == {RUN: "exec-1"}
            store._conn = sqlite3.connect(":memory:")
            with pytest.raises(sqlite3.Error):
                journal.leased_runs.record("other-run", "exec-1", "t")
            errors = [r for r in caplog.records if r.levelname == "ERROR"]
            assert len(errors) == 2, [r.getMessage() for r in errors]
            store._conn.close()
            store._conn = conn
    finally:
        store.close()
