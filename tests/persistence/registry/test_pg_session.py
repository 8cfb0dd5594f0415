"""The PostgreSQL registry's atomic session: BEGIN rides with its first statement, an
`executemany` with the session's next trip, COMMIT with the statement marked `last`
(else with what waits at the end), all in psycopg's pipeline mode. Trips are counted
as the waits that read the server's answer (one a round trip)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from code_hero.errors import ConflictError, NotFoundError
from code_hero.persistence.records import RunStatus, ThreadFilter, ThreadStatus
from code_hero.persistence.registry import PostgresRegistry
from code_hero.persistence.registry.postgres import _Readers
from code_hero.persistence.webhooks import DeliveryFilter, WebhookEvent, WebhookRecord
from tests.faults import a_lock_waits, until
from tests.persistence.registry import support
from tests.persistence.registry.support import events, make_pool, put, run
from tests.pgtrips import count_pg_statements, count_pg_trips

INSERT = (
    "INSERT INTO code_hero_threads (thread_id, status, metadata, created_at, updated_at) "
    "VALUES (?, 'IDLE', '{}', now(), now())"
)


async def names(registry: PostgresRegistry) -> list[str]:
    async with registry._session() as s:
        rows = await s.fetch("SELECT thread_id FROM code_hero_threads ORDER BY thread_id")
    return [r["thread_id"] for r in rows]


async def test_begin_rides_with_the_first_statement_and_commit_at_the_end(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = count_pg_trips(monkeypatch)
    async with pg_registry._session(atomic=True) as s:
        assert await s.fetch("SELECT count(*) AS n FROM code_hero_threads") == [{"n": 0}]
        assert await s.execute(INSERT, ["a"]) == 1
    # begin + select, insert, commit (were 4). At most: psycopg reads an answer that
    # is already in its buffer without a wait of its own, so a fast server can make it
    # fewer (seen once in a full run: 2).
    assert len(trips) <= 3
    assert await names(pg_registry) == ["a"]


async def test_a_batch_and_the_last_statement_commit_in_one_trip(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = count_pg_trips(monkeypatch)
    async with pg_registry._session(atomic=True) as s:
        await s.executemany(INSERT, [["a"], ["b"]])
        await s.executemany(INSERT, [["c"]])
        updated = await s.execute(
            "UPDATE code_hero_threads SET status = 'BUSY' WHERE thread_id <> ?", ["c"], last=True
        )
    assert updated == 2
    assert len(trips) == 1  # begin, inserts, update, commit (were 5)
    async with pg_registry._session(atomic=True) as s:
        await s.executemany(INSERT, [["d"]])  # waits for the commit at the end
    assert len(trips) == 2
    assert await names(pg_registry) == ["a", "b", "c", "d"]


async def test_an_event_batch_is_one_trip(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(pg_registry, "t1")
    await pg_registry.put_run(run("r1"))
    trips = count_pg_trips(monkeypatch)
    sent = count_pg_statements(monkeypatch)
    await pg_registry.store_batch(events("r1", "t1", 1, 2, 3), {"r1": {"input_tokens": 7}})
    assert len(trips) == 1  # the runs locked, inserts, update (were 5 trips, then 2)
    # One statement, committed on its own: no BEGIN, no COMMIT (were 3 statements).
    assert len(sent) == 1 and not {"BEGIN", "COMMIT"} & set(sent)
    assert [e.seq for e in await pg_registry.list_events("r1")] == [1, 2, 3]
    stored = await pg_registry.get_run("r1")
    assert stored is not None and stored.input_tokens == 7


async def test_an_event_batch_under_a_lease_is_one_trip(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease check (runs another executor holds are left out) reads the rows the
    # batch locks, in the batch's statement: a SELECT of its own was a trip more.
    await put(pg_registry, "t1")
    await put(pg_registry, "t2")
    await pg_registry.put_run(run("r1", lease_owner="me"))
    await pg_registry.put_run(run("r2", thread_id="t2", lease_owner="other"))
    trips = count_pg_trips(monkeypatch)
    sent = count_pg_statements(monkeypatch)
    lost = await pg_registry.store_batch(
        [*events("r1", "t1", 1, 2), *events("r2", "t2", 1)],
        {"r1": {"input_tokens": 7}, "r2": {"input_tokens": 7}},
        held_by={"r1": "me", "r2": "me"},
    )
    assert lost == {"r2"}
    assert len(trips) == 1 and len(sent) == 1
    assert [e.seq for e in await pg_registry.list_events("r1")] == [1, 2]
    assert await pg_registry.list_events("r2") == []
    stored = await pg_registry.get_run("r1")
    assert stored is not None and stored.input_tokens == 7
    other = await pg_registry.get_run("r2")
    assert other is not None and not other.input_tokens


async def test_a_failed_batch_rolls_the_whole_session_back(
    pg_registry: PostgresRegistry,
) -> None:
    async with pg_registry._session(atomic=True) as s:
        await s.execute(INSERT, ["a"])
    with pytest.raises(psycopg.errors.UniqueViolation):
        async with pg_registry._session(atomic=True) as s:
            await s.execute(INSERT, ["b"])
            await s.executemany(INSERT, [["c"], ["a"]])  # its error comes with the commit
    assert await names(pg_registry) == ["a"]
    async with pg_registry.pool.connection() as conn:  # back in the pool, idle
        assert conn.info.transaction_status == TransactionStatus.IDLE


async def test_a_session_of_one_trip_is_one_implicit_transaction(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session whose first trip commits sends no BEGIN and no COMMIT: its statements
    are one implicit transaction, committed by the trip's Sync, or rolled back whole
    when one of them fails."""
    async with pg_registry._session(atomic=True) as s:
        await s.execute(INSERT, ["a"])
    sent = count_pg_statements(monkeypatch)
    with pytest.raises(psycopg.errors.UniqueViolation):
        async with pg_registry._session(atomic=True) as s:
            await s.executemany(INSERT, [["b"], ["c"]])
            await s.execute(INSERT, ["a"], last=True)
    assert await names(pg_registry) == ["a"], "the rows before the failed one rolled back"
    async with pg_registry._session(atomic=True) as s:
        await s.executemany(INSERT, [["b"], ["c"]])
        await s.execute(INSERT, ["d"], last=True)
    assert await names(pg_registry) == ["a", "b", "c", "d"]
    assert not {"BEGIN", "COMMIT"} & set(sent)
    async with pg_registry.pool.connection() as conn:  # back in the pool, idle
        assert conn.info.transaction_status == TransactionStatus.IDLE


async def test_a_session_cancelled_in_its_last_trip_does_not_commit(
    pg_registry: PostgresRegistry,
) -> None:
    async def session() -> None:
        async with pg_registry._session(atomic=True) as s:
            await s.executemany(INSERT, [["a"]])
            await s.execute("SELECT pg_sleep(30)", last=True)

    task = asyncio.create_task(session())

    async def sleeping() -> bool:
        async with pg_registry._session() as s:
            rows = await s.fetch(
                "SELECT count(*) AS n FROM pg_stat_activity "
                "WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
            )
        return bool(rows[0]["n"])

    await until(sleeping)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await names(pg_registry) == []  # the server rolled the closed session back
    async with pg_registry._session(atomic=True) as s:  # the pool serves on
        await s.execute(INSERT, ["b"], last=True)
    assert await names(pg_registry) == ["b"]


async def test_a_body_that_caught_a_waiting_statements_error_does_not_end_quietly(
    pg_registry: PostgresRegistry,
) -> None:
    # A waiting executemany's error comes with the next statement, so a body catching
    # that statement's error caught the batch's; ended as if it committed, the session
    # wrote nothing and said nothing (review).
    async with pg_registry._session(atomic=True) as s:
        await s.execute(INSERT, ["a"])
    with pytest.raises(psycopg.errors.InFailedSqlTransaction):
        async with pg_registry._session(atomic=True) as s:
            await s.executemany(INSERT, [["a"]])
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                await s.execute(INSERT, ["b"])
    assert await names(pg_registry) == ["a"]
    async with pg_registry.pool.connection() as conn:
        assert conn.info.transaction_status == TransactionStatus.IDLE


async def test_a_run_starts_in_one_trip(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RUNNING and the last stored seq in one statement, not an update and a look."""
    await pg_registry.admit_run(run("r1"), reject_if_busy=False, events=events("r1", "t1", 1, 2))
    trips = count_pg_trips(monkeypatch)
    record, last = await pg_registry.start_run("r1", datetime.now(UTC))
    assert len(trips) == 1
    assert record is not None and record.status is RunStatus.RUNNING and last == 2


async def test_a_run_is_admitted_in_two_trips(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a thread that may be there: BEGIN with the thread's upsert; the run, its first
    events and COMMIT in one statement's trip (were three trips: the events waited for
    the end's COMMIT)."""
    await pg_registry.admit_run(run("r0", metadata={"k": 1}), reject_if_busy=False)
    await pg_registry.finish_run("r0", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    trips = count_pg_trips(monkeypatch)
    record, busy = await pg_registry.admit_run(
        run("r1"), reject_if_busy=False, events=events("r1", "t1", 1, 2)
    )
    assert len(trips) <= 3  # with the look for the thread's unfinished runs
    assert record is not None and busy is None
    thread = await pg_registry.get_thread("t1")
    assert thread is not None and thread.status is ThreadStatus.BUSY
    assert thread.metadata == {"graph": "g", "k": 1}, "a run leaves a thread's metadata alone"


async def test_a_run_on_a_thread_made_for_it_is_admitted_in_one_trip(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread id made up just now: the thread's row, the run and its first events in
    one statement (was two trips: the thread's upsert, then the run with COMMIT);
    refused whole when an id is taken or the owner is not the run's user."""
    trips = count_pg_trips(monkeypatch)
    record, busy = await pg_registry.admit_run(
        run("r1", user_id="u1", metadata={"k": 1}),
        reject_if_busy=False,
        events=events("r1", "t1", 1, 2),
        new_thread=True,
        owner="u1",
    )
    assert len(trips) == 1
    assert record is not None and busy is None
    thread = await pg_registry.get_thread("t1")
    assert thread is not None and thread.status is ThreadStatus.BUSY
    assert thread.user_id == "u1" and thread.metadata == {"graph": "g", "k": 1}
    with pytest.raises(NotFoundError):  # not the caller's: nothing recorded
        await pg_registry.admit_run(
            run("r2", "t2", user_id="u1"),
            reject_if_busy=False,
            events=events("r2", "t2", 1),
            new_thread=True,
            owner="u2",
        )
    assert await pg_registry.get_thread("t2") is None and await pg_registry.get_run("r2") is None
    with pytest.raises(ConflictError):  # a run id taken: nothing of the new thread either
        await pg_registry.admit_run(
            run("r1", "t3"), reject_if_busy=False, events=events("r1", "t3", 1), new_thread=True
        )
    assert await pg_registry.get_thread("t3") is None
    assert [e.seq for e in await pg_registry.list_events("r1")] == [1, 2]
    assert record is not None and busy is None
    assert await pg_registry.get_run("r1") == record
    assert [e.seq for e in await pg_registry.list_events("r1")] == [1, 2]
    # A run id taken: refused whole, its events with it.
    with pytest.raises(ConflictError):
        await pg_registry.admit_run(run("r1"), reject_if_busy=False, events=events("r1", "t1", 3))
    assert [e.seq for e in await pg_registry.list_events("r1")] == [1, 2]
    async with pg_registry._session() as s:
        assert s._conn.info.transaction_status == TransactionStatus.IDLE  # type: ignore[attr-defined]


async def test_a_run_ends_in_two_trips_its_deliveries_with_the_threads_status(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a webhook (made here, so no end looks for one first): the thread's lock and
    the run's update in one trip; its events, the deliveries and the thread's status
    (one statement) with the COMMIT in the next (were four trips); what each stores
    unchanged."""
    hook = WebhookRecord(
        "wh1", "u", "https://hooks.example.com/a", (WebhookEvent.RUN_SUCCEEDED,), datetime.now(UTC)
    )
    await pg_registry.create_webhook(hook, "whsec_c2VjcmV0")
    await pg_registry.admit_run(run("r1", user_id="u"), reject_if_busy=False)
    await pg_registry.admit_run(run("r2", "t2", user_id="u"), reject_if_busy=False)
    await pg_registry.admit_run(run("r3", "t2", user_id="u"), reject_if_busy=False)
    woken: list[None] = []
    pg_registry.on_enqueue(lambda: woken.append(None))

    trips = count_pg_trips(monkeypatch)
    sent = count_pg_statements(monkeypatch)
    ended, waiting = await pg_registry.finish_run(
        "r1", ThreadStatus.IDLE, events=events("r1", "t1", 2), status=RunStatus.SUCCESS
    )
    assert len(trips) <= 2
    # BEGIN, the lock, the update; the events, deliveries and status; COMMIT (the events
    # were a statement of their own).
    assert len(sent) == 5
    assert ended is not None and ended.status is RunStatus.SUCCESS and not waiting
    thread = await pg_registry.get_thread("t1")
    assert thread is not None and thread.status is ThreadStatus.IDLE
    assert [e.seq for e in await pg_registry.list_events("r1")] == [2]
    page = await pg_registry.list_deliveries(DeliveryFilter(run_id="r1"), first=10)
    assert [d.webhook_id for d in page.items] == ["wh1"] and len(woken) == 1

    # A run waits on t2: the thread stays BUSY, and the end is said to leave one waiting.
    _, waiting = await pg_registry.finish_run("r2", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    busy = await pg_registry.get_thread("t2")
    assert waiting and busy is not None and busy.status is ThreadStatus.BUSY
    assert len(woken) == 2
    # Ended again (a replay, its events with it): no second delivery, no wake-up, an
    # event stored already kept once.
    await pg_registry.finish_run(
        "r1", ThreadStatus.IDLE, events=events("r1", "t1", 2, 3), status=RunStatus.SUCCESS
    )
    page = await pg_registry.list_deliveries(DeliveryFilter(run_id="r1"), first=10)
    assert len(page.items) == 1 and len(woken) == 2
    assert [e.seq for e in await pg_registry.list_events("r1")] == [2, 3]
    # An end whose events were partly stored by a batch: the rest go with the end.
    await pg_registry.store_batch(events("r3", "t2", 1, 2), {})
    await pg_registry.finish_run(
        "r3", ThreadStatus.IDLE, events=events("r3", "t2", 2, 3, 4), status=RunStatus.SUCCESS
    )
    assert [e.seq for e in await pg_registry.list_events("r3")] == [1, 2, 3, 4]
    page = await pg_registry.list_deliveries(DeliveryFilter(run_id="r3"), first=10)
    assert len(page.items) == 1
    # Many events at the end: all stored, in the same trips.
    await pg_registry.admit_run(run("r4", "t4", user_id="u"), reject_if_busy=False)
    trips.clear()
    await pg_registry.finish_run(
        "r4", ThreadStatus.IDLE, events=events("r4", "t4", *range(1, 21)), status=RunStatus.SUCCESS
    )
    assert len(trips) <= 2
    assert [e.seq for e in await pg_registry.list_events("r4")] == list(range(1, 21))
    assert await pg_registry.finish_run("missing", ThreadStatus.IDLE, status=RunStatus.SUCCESS) == (
        None,
        False,
    )


async def test_a_run_ends_in_one_trip_when_no_webhook_can_want_it(
    pg_registry: PostgresRegistry, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No webhook and no URL of the run's own: the thread's lock, then the update, the
    events and the thread's status in one statement, committed by the trip's Sync (were
    two trips: BEGIN, the lock and the update; the rest with COMMIT). What each end
    stores is unchanged; a webhook made by another process defers its first end to the
    two trips, which queue its delivery, and the ends after it go the two trips at once."""
    await pg_registry.admit_run(run("r1", user_id="u"), reject_if_busy=False)
    await pg_registry.admit_run(run("r2", "t2", user_id="u"), reject_if_busy=False)
    await pg_registry.admit_run(run("r3", "t2", user_id="u"), reject_if_busy=False)
    trips = count_pg_trips(monkeypatch)
    sent = count_pg_statements(monkeypatch)
    ended, waiting = await pg_registry.finish_run(
        "r1", ThreadStatus.IDLE, events=events("r1", "t1", 3, 2), status=RunStatus.SUCCESS
    )
    assert len(trips) == 1 and len(sent) == 2  # the lock; the end
    assert ended is not None and ended.status is RunStatus.SUCCESS and not waiting
    assert ended == await pg_registry.get_run("r1")
    thread = await pg_registry.get_thread("t1")
    assert thread is not None and thread.status is ThreadStatus.IDLE
    assert [e.seq for e in await pg_registry.list_events("r1")] == [2, 3]
    # A run waits on t2: the thread stays BUSY, and the end says one waits.
    _, waiting = await pg_registry.finish_run("r2", ThreadStatus.IDLE, status=RunStatus.ERROR)
    busy = await pg_registry.get_thread("t2")
    assert waiting and busy is not None and busy.status is ThreadStatus.BUSY
    _, waiting = await pg_registry.finish_run("r3", ThreadStatus.ERROR, status=RunStatus.ERROR)
    ended_thread = await pg_registry.get_thread("t2")
    assert not waiting and ended_thread is not None and ended_thread.status is ThreadStatus.ERROR
    # Ended again (a replay): an event stored already kept once.
    await pg_registry.finish_run(
        "r1", ThreadStatus.IDLE, events=events("r1", "t1", 3, 4), status=RunStatus.SUCCESS
    )
    assert [e.seq for e in await pg_registry.list_events("r1")] == [2, 3, 4]
    # An end that does not apply (another holds the lease, the run is gone) stores nothing.
    await pg_registry.admit_run(run("r5", "t5"), reject_if_busy=False)
    refused = await pg_registry.finish_run(
        "r5",
        ThreadStatus.IDLE,
        if_leased_by="someone",
        events=events("r5", "t5", 1),
        status=RunStatus.SUCCESS,
    )
    assert refused == (None, False) and await pg_registry.list_events("r5") == []
    held = await pg_registry.get_run("r5")
    assert held is not None and held.status is RunStatus.PENDING
    held_thread = await pg_registry.get_thread("t5")
    assert held_thread is not None and held_thread.status is ThreadStatus.BUSY
    missing = await pg_registry.finish_run("missing", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    assert missing == (None, False)
    # A URL of the run's own: its end goes the way of deliveries, its delivery queued.
    own = run("r6", "t6", user_id="u", config={"__webhook": "https://hooks.example.com/own"})
    await pg_registry.admit_run(own, reject_if_busy=False)
    trips.clear()
    await pg_registry.finish_run("r6", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    assert len(trips) <= 5  # the one that found the URL, then the four two deliveries take
    page = await pg_registry.list_deliveries(DeliveryFilter(run_id="r6"), first=10)
    assert [d.webhook_id for d in page.items] == [None]
    # A webhook made by another process: the end that finds it defers to the two trips.
    other_pool = make_pool(pg_database)
    await other_pool.open()
    try:
        hook = WebhookRecord(
            "wh1",
            "u",
            "https://hooks.example.com/a",
            (WebhookEvent.RUN_SUCCEEDED,),
            datetime.now(UTC),
        )
        await PostgresRegistry(other_pool).create_webhook(hook, "whsec_c2VjcmV0")
    finally:
        await other_pool.close()
    await pg_registry.admit_run(run("r7", "t7", user_id="u"), reject_if_busy=False)
    await pg_registry.admit_run(run("r8", "t8", user_id="u"), reject_if_busy=False)
    trips.clear()
    await pg_registry.finish_run("r7", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    assert len(trips) <= 3
    page = await pg_registry.list_deliveries(DeliveryFilter(run_id="r7"), first=10)
    assert [d.webhook_id for d in page.items] == ["wh1"]
    trips.clear()
    await pg_registry.finish_run("r8", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    assert len(trips) <= 2
    page = await pg_registry.list_deliveries(DeliveryFilter(run_id="r8"), first=10)
    assert [d.webhook_id for d in page.items] == ["wh1"]


async def test_a_one_trip_end_sees_a_run_admitted_while_it_waited_for_the_thread(
    pg_registry: PostgresRegistry, pg_database: str
) -> None:
    """The end's statement goes after the thread's lock, so its look for waiting runs
    sees a run admitted while the lock was held by its admission: the thread stays
    BUSY and the end says a run waits (one statement, its snapshot taken before the
    wait, would have set the thread IDLE)."""
    await pg_registry.admit_run(run("r1"), reject_if_busy=False)
    async with await psycopg.AsyncConnection.connect(pg_database) as other:
        await other.execute("SELECT 1 FROM code_hero_threads WHERE thread_id = 't1' FOR UPDATE")
        ending = asyncio.ensure_future(
            pg_registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
        )

        await until(lambda: a_lock_waits(pg_database))
        await other.execute(
            "INSERT INTO code_hero_runs (run_id, thread_id, graph, status, created_at) "
            "VALUES ('r2', 't1', 'g', 'PENDING', now())"
        )
        await other.commit()
        ended, waiting = await ending
    assert ended is not None and ended.status is RunStatus.SUCCESS and waiting
    thread = await pg_registry.get_thread("t1")
    assert thread is not None and thread.status is ThreadStatus.BUSY


async def test_a_fetch_builds_no_column_descriptions(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `cursor.description` builds an object a column at every call: a page of threads
    # asked it once per fetch only to learn whether rows came back (issue 15).
    built: list[None] = []
    real = psycopg.Column.__init__

    def counted(self: psycopg.Column, *args: Any, **kwargs: Any) -> None:
        built.append(None)
        real(self, *args, **kwargs)

    monkeypatch.setattr(psycopg.Column, "__init__", counted)
    async with pg_registry._session() as s:
        assert await s.fetch("SELECT 1 AS one, 2 AS two") == [{"one": 1, "two": 2}]
        assert await s.fetch("SELECT thread_id FROM code_hero_threads") == []
        assert await s.fetch(INSERT, ["a"]) == []  # no rows: a statement's count alone
        assert await s.fetch(f"{INSERT} RETURNING thread_id", ["b"]) == [{"thread_id": "b"}]
    async with pg_registry._session(atomic=True) as s:
        assert await s.fetch("SELECT thread_id FROM code_hero_threads ORDER BY 1") == [
            {"thread_id": "a"},
            {"thread_id": "b"},
        ]
        assert await s.fetch(INSERT, ["c"], last=True) == []
    assert built == []
    assert await names(pg_registry) == ["a", "b", "c"]


async def test_a_copied_threads_row_is_two_trips_and_a_tombstone_still_refuses_it(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy-back's thread row (`put_thread`, twice a thread born in an outage): BEGIN,
    the upsert and the tombstone check in one trip, COMMIT in the next (were three); a
    thread deleted since the copy's creation still takes nothing."""
    trips = count_pg_trips(monkeypatch)
    assert await pg_registry.put_thread(support.thread("t1"))
    assert len(trips) <= 2
    assert await names(pg_registry) == ["t1"]
    created = datetime(2025, 1, 1, tzinfo=UTC)
    async with pg_registry._session(atomic=True) as s:
        await s.execute(
            "INSERT INTO code_hero_deleted_threads (thread_id, created_at, deleted_at) "
            "VALUES (?, ?, now())",
            ["t2", created],
        )
    assert not await pg_registry.put_thread(support.thread("t2", created))
    assert await names(pg_registry) == ["t1"]
    async with pg_registry.pool.connection() as conn:  # back in the pool, idle
        assert conn.info.transaction_status == TransactionStatus.IDLE


async def test_a_copied_run_that_ends_here_is_two_trips_with_its_deliveries(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy-back's finished run (`put_run(announce=True)`): its status before and its
    upsert in one trip, the deliveries with the COMMIT in the next (were four); copied
    again, it queues no second delivery. A run that does not end here is one trip."""
    hook = WebhookRecord(
        "wh1", "u", "https://hooks.example.com/a", (WebhookEvent.RUN_SUCCEEDED,), datetime.now(UTC)
    )
    await pg_registry.create_webhook(hook, "whsec_c2VjcmV0")
    await put(pg_registry, "t1", user_id="u")
    woken: list[None] = []
    pg_registry.on_enqueue(lambda: woken.append(None))
    ended = run("r1", user_id="u", status=RunStatus.SUCCESS, finished_at=datetime.now(UTC))
    trips = count_pg_trips(monkeypatch)
    await pg_registry.put_run(ended, announce=True)
    assert len(trips) <= 2
    page = await pg_registry.list_deliveries(DeliveryFilter(run_id="r1"), first=10)
    assert [d.webhook_id for d in page.items] == ["wh1"] and len(woken) == 1
    await pg_registry.put_run(ended, announce=True)
    page = await pg_registry.list_deliveries(DeliveryFilter(run_id="r1"), first=10)
    assert len(page.items) == 1 and len(woken) == 1
    sent = count_pg_statements(monkeypatch)
    await pg_registry.put_run(run("r2", user_id="u"), announce=True)
    assert not {"BEGIN", "COMMIT"} & set(sent) and len(sent) == 1
    got = await pg_registry.get_run("r2")
    assert got is not None and got.status is RunStatus.PENDING


async def test_a_copied_run_that_another_replica_ends_meanwhile_queues_no_second_end(
    pg_registry: PostgresRegistry, pg_database: str
) -> None:
    """A copy-back's finished run (`put_run(announce=True)`) racing another replica's end
    of the same run (a takeover of a lease that ran out in the primary): the status is
    read before the upsert waits for the other's row lock, so under read committed the
    copy sees the run unfinished, overwrites the end the other committed, and queues a
    second end (RUN_SUCCEEDED after RUN_FAILED was decided). Run after the other's
    commit, the same call queues nothing: the registry had the run finished."""
    hook = WebhookRecord(
        "wh1",
        "u",
        "https://hooks.example.com/a",
        (WebhookEvent.RUN_SUCCEEDED, WebhookEvent.RUN_FAILED),
        datetime.now(UTC),
    )
    await pg_registry.create_webhook(hook, "whsec_c2VjcmV0")
    await put(pg_registry, "t1", user_id="u")
    await pg_registry.put_run(run("r1", user_id="u", status=RunStatus.RUNNING))
    ended = run("r1", user_id="u", status=RunStatus.SUCCESS, finished_at=datetime.now(UTC))
    async with await psycopg.AsyncConnection.connect(pg_database) as other:
        # The other replica's end, its row lock held until it commits.
        await other.execute(
            "UPDATE code_hero_runs SET status = 'ERROR', finished_at = now() WHERE run_id = 'r1'"
        )
        copy = asyncio.create_task(pg_registry.put_run(ended, announce=True))

        await until(lambda: a_lock_waits(pg_database, other.info.backend_pid))
        await other.commit()
        await copy
    page = await pg_registry.list_deliveries(DeliveryFilter(run_id="r1"), first=10)
    assert [d.event for d in page.items] == []
    got = await pg_registry.get_run("r1")
    assert got is not None and got.status is RunStatus.ERROR


async def test_a_read_session_gives_its_connection_back_as_the_pool_would(
    pg_registry: PostgresRegistry,
) -> None:
    """A session that is no transaction ends as `pool.connection()` ends one: what its
    body left open is committed, or rolled back when the body fails; the connection
    goes back to the pool, idle, either way."""
    pool = pg_registry.pool
    idle = pool.get_stats()["pool_available"]
    async with pg_registry._session() as s:
        await s.execute("BEGIN")
        await s.execute(INSERT, ["kept"])
    with pytest.raises(psycopg.errors.UndefinedTable):
        async with pg_registry._session() as s:
            await s.execute("BEGIN")
            await s.execute(INSERT, ["dropped"])
            await s.execute("SELECT * FROM no_such_table")
    with pytest.raises(LookupError):
        async with pg_registry._session() as s:
            await s.execute("BEGIN")
            await s.execute(INSERT, ["also dropped"])
            raise LookupError
    assert await names(pg_registry) == ["kept"]
    assert pool.get_stats()["pool_available"] == idle
    async with pool.connection() as conn:
        assert conn.info.transaction_status == TransactionStatus.IDLE


def _counting_cursors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    cursor = psycopg.AsyncConnection.cursor

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        made.append("cursor")
        return cursor(self, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "cursor", counted)
    return made


async def test_thread_pages_read_on_one_cursor_a_connection(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page's read runs again on the cursor its connection kept (psycopg keeps the
    adaptation of a query it runs again): once each pooled connection has read a page,
    pages make no cursor, and read the same rows."""
    for name in ("a", "b", "c"):
        await put(pg_registry, name)
    first = await pg_registry.list_threads(ThreadFilter(), first=2)
    for _ in range(8):  # each of the pool's connections (at most 4) reads one
        await pg_registry.list_threads(ThreadFilter(), first=2)
    made = _counting_cursors(monkeypatch)
    for _ in range(8):
        assert await pg_registry.list_threads(ThreadFilter(), first=2) == first
    assert made == []


async def test_reads_at_once_on_one_connection_have_their_own_rows(
    pg_registry: PostgresRegistry,
) -> None:
    """A second read while the connection's kept cursor is out makes a cursor of its
    own; a read that fails does not leave its cursor kept."""
    for name in ("a", "b"):
        await put(pg_registry, name)
    async with pg_registry._session() as s:
        session = cast(Any, s)
        one, two = await asyncio.gather(
            session.fetch_tuples("SELECT thread_id FROM code_hero_threads ORDER BY thread_id"),
            session.fetch_tuples("SELECT 'x', ?::int", [7]),
        )
        assert (one, two) == ([("a",), ("b",)], [("x", 7)])
        with pytest.raises(psycopg.errors.UndefinedTable):
            await session.fetch_tuples("SELECT * FROM no_such_table")
        assert await session.fetch_tuples("SELECT 1") == [(1,)]


async def test_the_cursors_of_closed_connections_are_not_kept(pg_database: str) -> None:
    readers = _Readers(limit=2)
    conns = [await psycopg.AsyncConnection.connect(pg_database) for _ in range(4)]
    try:
        for conn in conns[:2]:
            readers.give_back(conn, readers.take(conn))
        kept = readers.take(conns[0])
        readers.give_back(conns[0], kept)
        assert readers.take(conns[0]) is kept  # taken out: the next take makes one anew
        assert readers.take(conns[0]) is not kept
        readers.give_back(conns[0], kept)
        await conns[1].close()
        readers.give_back(conns[1], readers.take(conns[1]))  # closed: not kept
        readers.give_back(conns[2], readers.take(conns[2]))  # new: the closed ones go
        assert set(readers._cursors) == {id(conns[0]), id(conns[2])}
        readers.give_back(conns[3], readers.take(conns[3]))  # past the limit: all go
        assert set(readers._cursors) == {id(conns[3])}
    finally:
        for conn in conns:
            await conn.close()
