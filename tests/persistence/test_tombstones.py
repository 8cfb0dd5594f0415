"""Tombstones: a thread another replica deleted stays deleted through an outage's copy-back.

Every deletion's last step leaves a tombstone (the thread's id and created_at) on
the primary; the copy-back (on time and late) gives nothing to a thread it names,
and the sweep forgets tombstones past their retention.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiosqlite
import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.auth import ANONYMOUS
from code_hero.config import (
    CheckpointerConfig,
    create_memory_checkpointer,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
)
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.backends import Backend, open_backend
from code_hero.persistence.entries import CopyThread, DeleteThread, PutCheckpoint, TouchThread
from code_hero.persistence.journal import Journal, Quarantined
from code_hero.persistence.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, Migration
from code_hero.persistence.records import (
    EventRecord,
    RunRecord,
    RunStatus,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.persistence.registry import PostgresRegistry, SqliteRegistry
from code_hero.persistence.registry.sql import SqlRegistry
from code_hero.persistence.tombstones import judge_for, log_dropped
from code_hero.persistence.transfer import migrate_backends
from code_hero.persistence.unreachable import is_backend_error
from tests.conftest import PG_ADMIN_URL, make_config
from tests.faults import BlackHoleProxy, until, with_port
from tests.persistence.registry.support import make_pool

RUN = "0b7d9a52-31c4-4c4e-8f3e-5a1f6b2c9d10"
PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432


@pytest.fixture(params=["sqlite", "postgres"])
def primary_config(request: pytest.FixtureRequest) -> CheckpointerConfig:
    return make_config(request.param, request)


def _checkpoint_config(thread_id: str) -> Any:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


async def _born_in_an_outage(fallback: Backend, thread_id: str, at: datetime) -> ThreadRecord:
    """A thread as a fallback holds one born in an outage: its row, a finished run with
    two events, a checkpoint."""
    thread = ThreadRecord(thread_id, "u", ThreadStatus.IDLE, {"from": "outage"}, at, at)
    await fallback.registry.put_thread(thread)
    await fallback.registry.put_run(
        RunRecord(RUN, thread_id, "g", RunStatus.SUCCESS, created_at=at)
    )
    await fallback.registry.store_events(
        [EventRecord(RUN, thread_id, seq, "status", {"n": seq}, at) for seq in (1, 2)]
    )
    await fallback.saver.aput(_checkpoint_config(thread_id), empty_checkpoint(), {}, {})
    return thread


async def _holds_nothing_of(primary: Backend, thread_id: str) -> bool:
    return (
        await primary.registry.get_thread(thread_id, expired=True) is None
        and await primary.registry.get_run(RUN) is None
        and await primary.registry.list_events(RUN) == []
        and await primary.count_checkpoints(thread_id) == 0
    )


# ---------------------------------------------------------------- copies


async def test_an_on_time_copy_of_a_thread_deleted_meanwhile_brings_nothing_back(
    primary_config: CheckpointerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """Replica B's first drain took a thread born in its outage to the primary; replica
    A deleted it there, and the deletion finished: no row, so no mark for a copy to
    keep. B's next copy of the thread (on time) upserted the row again, with its run
    and events: the thread came back. The tombstone of its created_at refuses it."""
    old = datetime.now(UTC) - timedelta(minutes=5)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        thread = await _born_in_an_outage(fallback, "t", old)
        await CopyThread("t", {}).replay(primary, fallback)  # B's first drain
        copied = await primary.registry.get_thread("t")
        assert copied is not None and copied.created_at == thread.created_at
        assert (await primary.registry.delete_thread("t"))[0]  # A's deletion, finished

        with caplog.at_level(logging.WARNING):
            await CopyThread("t", {}).replay(primary, fallback)  # B's later copy, on time
            await CopyThread("t", {}).late().replay(primary, fallback)  # and a late one
        assert await primary.registry.get_thread("t", expired=True) is None
        assert await primary.registry.get_run(RUN) is None
        assert await primary.registry.list_events(RUN) == []
        assert "thread t was deleted on the primary" in caplog.text


async def test_a_late_copy_gives_nothing_to_a_thread_made_anew_after_a_deletion(
    primary_config: CheckpointerConfig,
) -> None:
    """B's copy of a thread born in its outage was quarantined after its first drain;
    A deleted the thread and a client made it anew under the id (another created_at).
    The late copy added the old thread's run and events to the new thread, created_at
    alone not telling that row from one a run's admission made after the switch. The
    tombstone of the copy's created_at tells it: nothing of the old thread joins."""
    old, new = datetime.now(UTC) - timedelta(minutes=5), datetime.now(UTC)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await _born_in_an_outage(fallback, "t", old)
        await CopyThread("t", {}).replay(primary, fallback)  # B's first drain: the row
        await primary.registry.delete_thread("t")  # A's deletion
        made_anew = ThreadRecord("t", "u2", ThreadStatus.IDLE, {"new": True}, new, new)
        assert await primary.registry.create_thread(made_anew) is not None

        await CopyThread("t", {}).late().replay(primary, fallback)  # the retry
        assert await primary.registry.get_thread("t") == await primary.registry.get_thread(
            "t", expired=True
        )
        there = await primary.registry.get_thread("t")
        assert there is not None and (there.created_at, there.metadata) == (new, {"new": True})
        assert await primary.registry.get_run(RUN) is None
        assert await primary.registry.list_events(RUN) == []


async def test_the_copy_back_drops_every_entry_of_a_deleted_thread(
    primary_config: CheckpointerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """The journal's drain asks the primary's tombstones which threads of a batch are
    gone: their entries (the row's copy, checkpoints, touches) are dropped unreplayed,
    logged; the other threads' are replayed. A thread born in the outage is judged by
    its created_at; one from before it (no row in the fallback, so no created_at) by a
    deletion after the outage began."""
    began = datetime.now(UTC) - timedelta(minutes=1)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await _born_in_an_outage(fallback, "born", began)
        await CopyThread("born", {}).replay(primary, fallback)
        await primary.registry.delete_thread("born")  # A's deletion, in B's outage
        # Threads from before the outage: one deleted in it, one long before it (the id
        # used again in the outage: a thread of its own, kept), one never deleted.
        for thread_id in ("before", "reused", "kept"):
            await primary.registry.touch_threads({thread_id: "u"})
        await primary.registry.delete_thread("before")
        await primary.registry.delete_thread("reused")
        async with primary.registry._session() as s:  # type: ignore[attr-defined]
            await s.execute(
                "UPDATE code_hero_deleted_threads SET deleted_at = ? WHERE thread_id = ?",
                [primary.registry._ts(began - timedelta(days=1)), "reused"],  # type: ignore[attr-defined]
            )

        journal = Journal(limit=100)
        for thread_id in ("born", "before", "reused", "kept"):
            if thread_id == "born":
                journal.append(CopyThread(thread_id, {}))
            checkpoint = {**empty_checkpoint(), "id": str(uuid.uuid4())}
            journal.append(PutCheckpoint(_checkpoint_config(thread_id), checkpoint, {}, {}))
            journal.append(TouchThread(thread_id, "u", create=True))
        synced = []
        with caplog.at_level(logging.WARNING):
            await journal.drain(
                primary=primary,
                fallback=fallback,
                concurrency=2,
                is_unreachable=is_backend_error,
                on_synced=lambda: synced.append(1),
                judge=judge_for(primary, fallback, began),
            )
        assert len(journal) == 0 and not journal.quarantine and len(synced) == 9
        assert await _holds_nothing_of(primary, "born")
        assert await primary.registry.get_thread("before", expired=True) is None
        assert await primary.count_checkpoints("before") == 0
        for thread_id in ("reused", "kept"):
            assert await primary.registry.get_thread(thread_id) is not None
            assert await primary.count_checkpoints(thread_id) == 1
        assert "thread born was deleted" in caplog.text and "1 CopyThread" in caplog.text
        assert "thread before was deleted" in caplog.text and "1 TouchThread" in caplog.text
        assert "thread kept" not in caplog.text


async def test_quarantined_entries_of_a_deleted_thread_are_dropped_at_their_retry(
    primary_config: CheckpointerConfig,
) -> None:
    """Entries the primary refused at the copy-back (quarantined), retried after the
    switch, find their thread deleted meanwhile: dropped, settled, nothing copied."""
    old = datetime.now(UTC) - timedelta(minutes=5)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await _born_in_an_outage(fallback, "t", old)
        await CopyThread("t", {}).replay(primary, fallback)  # the first drain's copy
        await primary.registry.delete_thread("t")  # A's deletion, after the switch
        journal = Journal(limit=10)
        checkpoint = {**empty_checkpoint(), "id": str(uuid.uuid4())}
        for entry in (
            CopyThread("t", {}),
            PutCheckpoint(_checkpoint_config("t"), checkpoint, {}, {}),
        ):
            journal.quarantine.append(Quarantined(entry, 1, "refused"))
        done, stopped = await journal.retry_quarantined(
            primary=primary,
            fallback=fallback,
            is_unreachable=is_backend_error,
            judge=judge_for(primary, fallback, old),
        )
        assert stopped is None and len(done) == 2 and not journal.quarantine
        assert await _holds_nothing_of(primary, "t")


# ---------------------------------------------------------------- end to end


@pytest.mark.postgres
async def test_a_thread_deleted_by_one_replica_stays_deleted_after_anothers_outage(
    pg_database: str,
) -> None:
    """Replica B lost PostgreSQL and wrote a checkpoint of thread T through its saver
    (T from before the outage: the fallback holds the checkpoint and journals it and a
    touch of T); meanwhile replica A deleted T, to the end. When PostgreSQL came back,
    B's copy-back made T's row anew (the touch) and put its checkpoint back: T was
    resurrected. Now the deletion wins: nothing of T reaches PostgreSQL."""
    async with AsyncExitStack() as stack:
        proxy = await stack.enter_async_context(BlackHoleProxy("127.0.0.1", PG_PORT))
        b_config = create_postgres_checkpointer(
            with_port(pg_database, proxy.port), pool_timeout=1, health_check_interval=0.2
        )
        a_config = create_postgres_checkpointer(pg_database, pool_max_size=4)
        b = await stack.enter_async_context(
            Gateway(GatewaySettings(checkpointer=b_config, sweep_interval=None))
        )
        a = await stack.enter_async_context(
            Gateway(GatewaySettings(checkpointer=a_config, sweep_interval=None))
        )
        thread = await b.create_thread(caller=ANONYMOUS)
        tid = thread.thread_id

        proxy.refuse()
        await until(lambda: _is(b, "degraded"))
        saver = b.manager.get_checkpointer()
        await saver.aput(_checkpoint_config(tid), empty_checkpoint(), {"user_id": "u"}, {})
        assert b.manager.pending_sync > 0
        gone = await a.delete_thread(tid)
        assert gone.deleted

        proxy.forward()
        await until(lambda: _is(b, "healthy", synced=True))
        for table in ("code_hero_threads", "checkpoints"):
            assert _rows(
                pg_database, f"SELECT count(*) FROM {table} WHERE thread_id = %s", tid
            ) == [(0,)], table
        assert await a.manager.registry.get_thread(tid) is None


async def _is(gw: Gateway, status: str, *, synced: bool = False) -> bool:
    return gw.manager.overall_status == status and (not synced or gw.manager.pending_sync == 0)


def _rows(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql, params).fetchall())


# ---------------------------------------------------------------- written, forgotten


@pytest.fixture
async def gateway(primary_config: CheckpointerConfig) -> AsyncIterator[Gateway]:
    async with Gateway(GatewaySettings(checkpointer=primary_config, sweep_interval=None)) as gw:
        yield gw


async def _old_thread(gw: Gateway, **fields: Any) -> ThreadRecord:
    """A thread last updated an hour ago (retention selects it), with `fields`."""
    made = await gw.create_thread(caller=ANONYMOUS, **fields)
    then = datetime.now(UTC) - timedelta(hours=1)
    aged = replace(made, created_at=then, updated_at=then)
    assert await gw.manager.registry.put_thread(aged)
    stored = await gw.manager.registry.get_thread(made.thread_id, expired=True)
    assert stored is not None
    return stored


@pytest.mark.parametrize(
    "path",
    [
        "deleteThread",
        "deleteThreads",
        "pruneThreads",
        "prune",
        "sweep",
        "cli prune",
        "marked",
        "journal",
    ],
)
async def test_every_deletion_leaves_a_tombstone(gateway: Gateway, path: str) -> None:
    """Each way a thread's row goes writes its tombstone with the delete: the id, the
    row's created_at, when."""
    gw, caller = gateway, ANONYMOUS
    registry = gw.manager.registry
    thread = await _old_thread(gw, ttl_seconds=60 if path == "sweep" else None)
    tid = thread.thread_id
    before = datetime.now(UTC)
    older = datetime.now(UTC) - timedelta(minutes=1)
    if path == "deleteThread":
        assert (await gw.delete_thread(tid, caller=caller)).deleted
    elif path == "deleteThreads":
        assert (await gw.delete_threads(None, caller=caller)).thread_ids == [tid]
    elif path == "pruneThreads":
        assert (await gw.prune_threads(None, older_than=older, caller=caller)).threads_deleted == 1
    elif path == "prune":
        assert (await gw.prune(older_than=older, caller=caller)).threads_deleted == 1
    elif path == "sweep":
        assert await gw.sweep_expired() == [tid]
    elif path == "cli prune":
        assert (await gw.manager.prune(older_than=older)).threads_deleted == 1
    elif path == "marked":
        mark = await registry.start_deletion(tid)
        assert mark is not None
        assert (await registry.delete_thread(tid, marked=mark.token))[0]
    else:  # the journal's DeleteThread, the fallback's forget_thread
        assert (await registry.delete_thread(tid))[0]
    assert await registry.get_thread(tid, expired=True) is None
    ((created, deleted),) = (await registry.deleted_threads([tid]))[tid]
    assert created == thread.created_at and deleted >= before - timedelta(seconds=1)
    # A copy of that thread is refused; one of a thread made anew under the id is not.
    assert not await registry.put_thread(thread)
    assert await registry.get_thread(tid, expired=True) is None
    assert await registry.put_thread(replace(thread, created_at=datetime.now(UTC)))


async def test_the_sweep_forgets_tombstones_past_their_retention(gateway: Gateway) -> None:
    gw = gateway
    registry = gw.manager.registry
    doomed = [await _old_thread(gw) for _ in range(3)]
    for thread in doomed:
        assert (await gw.delete_thread(thread.thread_id, caller=ANONYMOUS)).deleted
    old, recent = doomed[:2], doomed[2]
    primary = gw.manager.router.primary.backend
    assert primary is not None
    past = datetime.now(UTC) - timedelta(seconds=gw.settings.tombstone_retention + 60)
    async with primary.registry._session() as s:  # type: ignore[attr-defined]
        for thread in old:
            await s.execute(
                "UPDATE code_hero_deleted_threads SET deleted_at = ? WHERE thread_id = ?",
                [primary.registry._ts(past), thread.thread_id],  # type: ignore[attr-defined]
            )
    ids = [t.thread_id for t in doomed]
    assert set(await registry.deleted_threads(ids)) == set(ids)

    assert await gw.sweep_expired() == []
    assert set(await registry.deleted_threads(ids)) == {recent.thread_id}
    assert await gw.sweep_expired() == []  # nothing more past it
    assert set(await registry.deleted_threads(ids)) == {recent.thread_id}
    assert gw.settings.tombstone_retention == 30 * 24 * 3600


async def test_migrating_again_leaves_a_thread_deleted_in_the_target(tmp_path: Path) -> None:
    """`code-hero migrate` re-run after a thread it copied was deleted in the target:
    the copy of the deleted thread is refused (its tombstone), and the migration goes
    on with the others instead of failing on the thread's runs."""
    source = create_sqlite_checkpointer(str(tmp_path / "src.sqlite"))
    target = create_sqlite_checkpointer(str(tmp_path / "dst.sqlite"))
    async with open_backend(source) as src, open_backend(target) as dst:
        now = datetime.now(UTC)
        for thread_id in ("gone", "kept"):
            await src.registry.put_thread(
                ThreadRecord(thread_id, "u", ThreadStatus.IDLE, {}, now, now)
            )
            await src.registry.put_run(
                RunRecord(str(uuid.uuid4()), thread_id, "g", RunStatus.SUCCESS, created_at=now)
            )
        assert (await migrate_backends(src, dst)).threads == 2
        assert (await dst.registry.delete_thread("gone"))[0]

        again = await migrate_backends(src, dst)
        assert (again.threads, again.runs) == (1, 1)
        assert await dst.registry.get_thread("gone", expired=True) is None
        assert await dst.registry.get_thread("kept") is not None


# ---------------------------------------------------------------- migration


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_the_tombstone_migration_on_a_database_of_the_previous_version(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A database set up by the previous release (no tombstone table), with a thread:
    the migration adds the table; deletions from then on leave tombstones."""

    async def exercise(
        old: SqliteRegistry | PostgresRegistry, new: SqliteRegistry | PostgresRegistry
    ) -> None:
        await old.setup()
        now = datetime.now(UTC)
        await old.touch_threads({"kept": None, "gone": None})
        assert (await old.delete_thread("gone"))[0] is True  # no tombstone yet: no table
        await new.setup()
        await new.setup()  # idempotent
        assert await new.deleted_threads(["gone", "kept"]) == {}
        kept = await new.get_thread("kept")
        assert kept is not None
        assert (await new.delete_thread("kept"))[0]
        ((created, deleted),) = (await new.deleted_threads(["kept"]))["kept"]
        assert created == kept.created_at and deleted >= now - timedelta(seconds=1)

    if kind == "sqlite":
        async with aiosqlite.connect(str(tmp_path / "old.sqlite")) as conn:
            lock = asyncio.Lock()
            await exercise(_OldSqlite(conn, lock), SqliteRegistry(conn, lock))
        return
    pool = make_pool(request.getfixturevalue("pg_database"))
    await pool.open()
    try:
        await exercise(_OldPostgres(pool), PostgresRegistry(pool))
    finally:
        await pool.close()


class _OldDeletion(SqlRegistry):
    """Deleting as the previous release did: today's delete statements but the tombstone's."""

    async def delete_thread(self, thread_id: str, *, marked: str | None = None) -> tuple[bool, int]:
        async with self._session(atomic=True) as s:
            runs = await s.execute("DELETE FROM code_hero_runs WHERE thread_id = ?", [thread_id])
            threads = await s.execute(
                "DELETE FROM code_hero_threads WHERE thread_id = ?", [thread_id]
            )
        return threads > 0, runs


def _before_tombstones(migrations: list[Migration]) -> list[Migration]:
    """The migrations of the release before the tombstone table (not merely all but the
    last: later migrations were appended since)."""
    for at, migration in enumerate(migrations):
        statements = migration if isinstance(migration, tuple) else (migration,)
        if any("CREATE TABLE code_hero_deleted_threads" in s for s in statements):
            return migrations[:at]
    raise AssertionError("no tombstone migration")


class _OldSqlite(_OldDeletion, SqliteRegistry):
    """The registry as the previous release had it (no tombstone table)."""

    migrations = _before_tombstones(SQLITE_MIGRATIONS)


class _OldPostgres(_OldDeletion, PostgresRegistry):
    migrations = _before_tombstones(POSTGRES_MIGRATIONS)


def test_dropping_only_a_deletion_of_a_deleted_thread_warns_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A deleteThread whose statement went in on the primary as the outage began, and was
    done again on the fallback: the copy-back drops that deletion, and nothing is lost,
    so no WARNING (it read as data dropped). Anything else dropped still warns."""
    at = datetime.now(UTC)
    with caplog.at_level(logging.INFO, logger="code_hero.persistence.tombstones"):
        log_dropped("t", at, [DeleteThread("t")])
        assert [r.levelno for r in caplog.records] == [logging.INFO]
        caplog.clear()
        log_dropped("t", at, [DeleteThread("t"), TouchThread("t", None)])
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
