"""The SQLite sqlite_registry's atomic session: BEGIN IMMEDIATE rides with its first statement,
an `executemany` with the session's next trip; `transaction()`, whose callers use the
connection itself, sends BEGIN at once and holds nothing back."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from code_hero.config import create_sqlite_checkpointer
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.records import RunStatus, ThreadStatus
from code_hero.persistence.registry import SqliteRegistry
from code_hero.persistence.webhooks import DeliveryFilter, WebhookEvent, WebhookRecord
from tests.persistence.registry.support import events, run


def count_trips(sqlite_registry: SqliteRegistry, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every call sent to aiosqlite's thread from now on."""
    trips: list[Any] = []
    real = sqlite_registry.conn._execute

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(fn)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(sqlite_registry.conn, "_execute", counted)
    return trips


async def test_begin_travels_with_the_first_statement(
    sqlite_registry: SqliteRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    sql = "SELECT count(*) AS n FROM code_hero_threads"
    async with sqlite_registry._session(atomic=True) as s:
        await s.fetch(sql)  # its columns known from now on
    trips = count_trips(sqlite_registry, monkeypatch)
    async with sqlite_registry._session(atomic=True) as s:
        assert await s.fetch(sql) == [{"n": 0}]
        assert sqlite_registry.conn.in_transaction
        await s.execute("DELETE FROM code_hero_threads WHERE thread_id = ?", ["none"])
    assert len(trips) == 3  # begin + select, delete, commit
    assert not sqlite_registry.conn.in_transaction


async def test_each_kind_of_first_statement_begins(
    sqlite_registry: SqliteRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert = (
        "INSERT INTO code_hero_threads (thread_id, status, metadata, created_at, updated_at) "
        "VALUES (?, 'IDLE', '{}', '2026-01-01', '2026-01-01')"
    )
    trips = count_trips(sqlite_registry, monkeypatch)
    async with sqlite_registry._session(atomic=True) as s:
        assert await s.execute(insert, ["a"]) == 1
        assert sqlite_registry.conn.in_transaction
    async with sqlite_registry._session(atomic=True) as s:
        await s.executemany(insert, [["b"], ["c"]])  # waits for the commit
    assert len(trips) == 3  # begin + statement, commit; begin + statements + commit
    rows = await sqlite_registry.conn.execute_fetchall("SELECT thread_id FROM code_hero_threads")
    assert sorted(r[0] for r in rows) == ["a", "b", "c"]


async def test_the_first_read_takes_the_write_lock(
    sqlite_registry: SqliteRegistry, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "reg.sqlite", timeout=0, isolation_level=None)
    try:
        async with sqlite_registry._session(atomic=True) as s:
            await s.fetch("SELECT count(*) AS n FROM code_hero_threads")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")  # another process would wait for us
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_a_failed_first_statement_leaves_no_transaction(
    sqlite_registry: SqliteRegistry,
) -> None:
    with pytest.raises(sqlite3.OperationalError):
        async with sqlite_registry._session(atomic=True) as s:
            await s.fetch("SELECT nothing FROM no_such_table")
    assert not sqlite_registry.conn.in_transaction
    async with sqlite_registry._session(atomic=True) as s:  # the next session begins as usual
        assert await s.fetch("SELECT 1 AS one") == [{"one": 1}]


async def test_a_transaction_holds_the_write_lock_before_any_statement(
    sqlite_registry: SqliteRegistry, tmp_path: Path
) -> None:
    # The backend runs its statements on the connection itself (not the session's): a
    # BEGIN kept for the session's first statement was never sent, and the look before a
    # delete (`delete_orphan_checkpoints`) ran outside any transaction.
    other = sqlite3.connect(tmp_path / "reg.sqlite", timeout=0, isolation_level=None)
    try:
        async with sqlite_registry.transaction():
            assert sqlite_registry.conn.in_transaction
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")  # another process would wait for us
        assert not sqlite_registry.conn.in_transaction
    finally:
        other.close()


INSERT_THREAD = (
    "INSERT INTO code_hero_threads (thread_id, status, metadata, created_at, updated_at) "
    "VALUES (?, 'IDLE', '{}', '2026-01-01', '2026-01-01')"
)


async def thread_ids(sqlite_registry: SqliteRegistry) -> list[str]:
    rows = await sqlite_registry.conn.execute_fetchall("SELECT thread_id FROM code_hero_threads")
    return sorted(r[0] for r in rows)


async def test_executemany_goes_with_the_next_trip_in_order(
    sqlite_registry: SqliteRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = "SELECT count(*) AS n FROM code_hero_threads"
    async with sqlite_registry._session() as s:
        await s.fetch(count)  # its columns known from now on
    trips = count_trips(sqlite_registry, monkeypatch)
    async with sqlite_registry._session(atomic=True) as s:
        await s.executemany(INSERT_THREAD, [["a"], ["b"]])
        assert not trips  # nothing sent yet
        assert await s.fetch(count) == [{"n": 2}]  # sent first, in the same trip
        await s.executemany(INSERT_THREAD, [["c"]])
        assert await s.execute("DELETE FROM code_hero_threads WHERE thread_id = ?", ["a"]) == 1
        await s.executemany(INSERT_THREAD, [["d"]])
    assert len(trips) == 3  # begin + inserts + select, insert + delete, insert + commit
    assert not sqlite_registry.conn.in_transaction
    assert await thread_ids(sqlite_registry) == ["b", "c", "d"]


async def test_a_refused_executemany_rolls_the_whole_session_back(
    sqlite_registry: SqliteRegistry,
) -> None:
    async with sqlite_registry._session() as s:
        await s.executemany(INSERT_THREAD, [["kept"]])
    with pytest.raises(sqlite3.IntegrityError):
        async with sqlite_registry._session(atomic=True) as s:
            assert await s.execute(INSERT_THREAD, ["new"]) == 1
            await s.executemany(INSERT_THREAD, [["other"], ["kept"]])  # a duplicate key
    assert not sqlite_registry.conn.in_transaction
    assert await thread_ids(sqlite_registry) == ["kept"]
    async with sqlite_registry._session(atomic=True) as s:  # the next session as usual
        await s.executemany(INSERT_THREAD, [["next"]])
    assert await thread_ids(sqlite_registry) == ["kept", "next"]


async def test_a_transaction_sends_executemany_at_once(sqlite_registry: SqliteRegistry) -> None:
    async with sqlite_registry.transaction() as s:
        await s.executemany(INSERT_THREAD, [["a"]])
        # Its callers read with the connection itself: what they wrote is there.
        rows = await sqlite_registry.conn.execute_fetchall("SELECT count(*) FROM code_hero_threads")
        assert list(rows) == [(1,)]
    assert await thread_ids(sqlite_registry) == ["a"]


async def test_the_last_statement_commits_in_its_own_trip(
    sqlite_registry: SqliteRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = count_trips(sqlite_registry, monkeypatch)
    async with sqlite_registry._session(atomic=True) as s:
        await s.executemany(INSERT_THREAD, [["a"]])
        assert await s.execute(INSERT_THREAD, ["b"], last=True) == 1
        assert not sqlite_registry.conn.in_transaction  # committed already
    async with sqlite_registry._session() as s:
        rows = await s.fetch(
            "UPDATE code_hero_threads SET status = 'BUSY' WHERE thread_id = ? RETURNING thread_id",
            ["a"],
            last=True,
        )
        assert rows == [{"thread_id": "a"}]
        assert not sqlite_registry.conn.in_transaction
    assert len(trips) == 2  # begin + insert + insert + commit; update + commit
    assert await thread_ids(sqlite_registry) == ["a", "b"]


async def test_a_refused_last_statement_commits_nothing(sqlite_registry: SqliteRegistry) -> None:
    async with sqlite_registry._session() as s:
        await s.executemany(INSERT_THREAD, [["kept"]])
    with pytest.raises(sqlite3.IntegrityError):
        async with sqlite_registry._session(atomic=True) as s:
            await s.execute(INSERT_THREAD, ["new"])
            await s.execute(INSERT_THREAD, ["kept"], last=True)  # a duplicate key
    assert not sqlite_registry.conn.in_transaction
    assert await thread_ids(sqlite_registry) == ["kept"]


async def test_a_new_threads_admission_skips_the_look_for_its_runs(
    sqlite_registry: SqliteRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    await sqlite_registry.admit_run(run("warm", "old"), reject_if_busy=False)  # columns known
    await sqlite_registry.admit_run(run("queued", "old"), reject_if_busy=False)
    trips = count_trips(sqlite_registry, monkeypatch)
    admitted, busy = await sqlite_registry.admit_run(
        run("first", "made-up"),
        reject_if_busy=True,
        events=events("first", "made-up", 1),
        new_thread=True,
    )
    assert admitted is not None and busy is None
    assert len(trips) == 1  # begin + thread + run + events + commit (issue 15)
    trips.clear()
    admitted, busy = await sqlite_registry.admit_run(run("later", "old"), reject_if_busy=False)
    assert admitted is not None and busy == "warm"  # a thread of the caller's: looked at
    assert len(trips) == 4  # begin + thread, its runs, run, commit


async def test_the_manager_passes_a_new_thread_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the fallback router (what the executor calls), as on the registry itself."""
    async with EnhancedCheckpointerManager(
        create_sqlite_checkpointer(str(tmp_path / "m.sqlite"))
    ) as manager:
        backend = manager.router.primary.backend
        assert backend is not None and isinstance(backend.registry, SqliteRegistry)
        await manager.registry.admit_run(run("warm", "old"), reject_if_busy=False)
        trips = count_trips(backend.registry, monkeypatch)
        admitted, busy = await manager.registry.admit_run(
            run("first", "made-up"),
            reject_if_busy=True,
            events=events("first", "made-up", 1),
            new_thread=True,
        )
        assert admitted is not None and busy is None
        assert len(trips) == 1  # begin + thread + run + events + commit


async def test_fetch_each_sends_its_statements_in_one_trip_in_order(
    sqlite_registry: SqliteRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = count_trips(sqlite_registry, monkeypatch)
    async with sqlite_registry._session(atomic=True) as s:
        await s.executemany(INSERT_THREAD, [["a"]])  # waits for the next trip, goes first
        inserted, updated, read = await s.fetch_each(
            [
                (f"{INSERT_THREAD} RETURNING thread_id", ["b"]),
                ("UPDATE code_hero_threads SET status = 'BUSY' RETURNING 1", []),
                ("SELECT thread_id, status FROM code_hero_threads ORDER BY thread_id", []),
            ],
            last=True,
        )
        assert not sqlite_registry.conn.in_transaction  # committed already
    assert len(trips) == 1  # begin + insert + the three + commit
    assert inserted == [{"thread_id": "b"}] and len(updated) == 2
    assert read == [{"thread_id": "a", "status": "BUSY"}, {"thread_id": "b", "status": "BUSY"}]


async def test_a_refused_statement_of_fetch_each_commits_nothing(
    sqlite_registry: SqliteRegistry,
) -> None:
    async with sqlite_registry._session() as s:
        await s.executemany(INSERT_THREAD, [["kept"]])
    with pytest.raises(sqlite3.IntegrityError):
        async with sqlite_registry._session(atomic=True) as s:
            await s.fetch_each([(INSERT_THREAD, ["new"]), (INSERT_THREAD, ["kept"])], last=True)
    assert not sqlite_registry.conn.in_transaction
    assert await thread_ids(sqlite_registry) == ["kept"]


async def test_a_runs_end_is_two_trips(
    sqlite_registry: SqliteRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread's look with the run's update, then its events, deliveries and the
    thread's status with the commit (issue 15; were four trips): what each stores, and
    the wake-up of the delivery workers, unchanged."""
    hook = WebhookRecord(
        "wh1", "u", "https://hooks.example.com/a", (WebhookEvent.RUN_SUCCEEDED,), datetime.now(UTC)
    )
    await sqlite_registry.create_webhook(hook, "whsec_c2VjcmV0")
    for run_id, thread_id in [("warm", "t0"), ("r1", "t1"), ("r2", "t2"), ("r3", "t2")]:
        await sqlite_registry.admit_run(run(run_id, thread_id, user_id="u"), reject_if_busy=False)
    await sqlite_registry.finish_run("warm", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    woken: list[None] = []
    sqlite_registry.on_enqueue(lambda: woken.append(None))
    trips = count_trips(sqlite_registry, monkeypatch)
    finished, waiting = await sqlite_registry.finish_run(
        "r1", ThreadStatus.IDLE, events=events("r1", "t1", 2, 3), status=RunStatus.SUCCESS
    )
    assert len(trips) == 2
    assert finished is not None and finished.status is RunStatus.SUCCESS and not waiting
    thread = await sqlite_registry.get_thread("t1")
    assert thread is not None and thread.status is ThreadStatus.IDLE
    assert [e.seq for e in await sqlite_registry.list_events("r1")] == [2, 3]
    page = await sqlite_registry.list_deliveries(DeliveryFilter(run_id="r1"), first=10)
    assert [d.webhook_id for d in page.items] == ["wh1"] and len(woken) == 1
    # A thread with a run waiting stays BUSY, and the end says a run waits.
    _, waiting = await sqlite_registry.finish_run("r2", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    busy = await sqlite_registry.get_thread("t2")
    assert waiting and busy is not None and busy.status is ThreadStatus.BUSY
    assert len(woken) == 2
    # Ended again: no second delivery, no wake-up.
    await sqlite_registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    page = await sqlite_registry.list_deliveries(DeliveryFilter(run_id="r1"), first=10)
    assert len(page.items) == 1 and len(woken) == 2
