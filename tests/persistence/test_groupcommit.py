"""Group commit on PostgreSQL: concurrent threads' writes share transactions and land
as the stock saver writes them, in each thread's order; a bad write fails only its
caller; a cancelled caller loses nobody else's data."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import psycopg
import pytest
from langchain_core.runnables import RunnableConfig
from psycopg.conninfo import conninfo_to_dict

from code_hero.config import create_postgres_checkpointer
from code_hero.persistence import groupcommit
from code_hero.persistence.backends import PostgresBackend
from code_hero.persistence.groupcommit import GroupCommitSaverPool
from code_hero.persistence.journal import PutCheckpoint, PutWrites
from code_hero.persistence.savers import SaverPool
from tests.persistence.test_bulk import TABLES, journalled, second_pg_database, table

pytestmark = pytest.mark.postgres

__all__ = ["second_pg_database"]  # a fixture, used by name

THREADS = 12

# Records the order in which checkpoint rows reach the table.
ORDER_LOG = """
CREATE TABLE put_order (seq bigserial PRIMARY KEY, thread_id text, checkpoint_id text);
CREATE FUNCTION log_put() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO put_order (thread_id, checkpoint_id) VALUES (NEW.thread_id, NEW.checkpoint_id);
    RETURN NEW;
END $$;
CREATE TRIGGER log_put AFTER INSERT ON checkpoints FOR EACH ROW EXECUTE FUNCTION log_put();
"""


async def opened(url: str, *, group_commit: bool = True) -> PostgresBackend:
    backend = PostgresBackend(create_postgres_checkpointer(url, group_commit=group_commit))
    await backend.open()
    return backend


@pytest.fixture
async def grouped(pg_database: str) -> AsyncIterator[GroupCommitSaverPool]:
    backend = await opened(pg_database)
    assert isinstance(backend.saver, GroupCommitSaverPool)
    try:
        yield backend.saver
    finally:
        await backend.close()


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """At most 5 writes a transaction: a few threads' writes span several."""
    monkeypatch.setattr(groupcommit, "MAX_BATCH", 5)
    yield


def call(saver: SaverPool, entry: PutCheckpoint | PutWrites) -> Awaitable[Any]:
    if isinstance(entry, PutCheckpoint):
        return saver.aput(entry.config, entry.checkpoint, entry.metadata, entry.versions)
    return saver.aput_writes(entry.config, entry.writes, entry.task_id, entry.task_path)


async def in_order(saver: SaverPool, entries: list[PutCheckpoint | PutWrites]) -> None:
    for entry in entries:
        await call(saver, entry)


def is_blob(value: Any) -> bool:
    """The stock saver stores a channel value in checkpoint_blobs (not inline)."""
    return not (value is None or isinstance(value, str | int | float | bool))


def with_text(entry: PutCheckpoint, text: str) -> PutCheckpoint:
    values = {**entry.checkpoint["channel_values"], "text": text}
    return PutCheckpoint(
        entry.config, {**entry.checkpoint, "channel_values": values}, entry.metadata, entry.versions
    )


async def threads_entries(count: int) -> dict[str, list[PutCheckpoint | PutWrites]]:
    return {f"t{i}": await journalled(f"t{i}") for i in range(count)}


async def test_concurrent_threads_land_the_rows_the_stock_saver_writes(
    pg_database: str, second_pg_database: str
) -> None:
    by_thread = await threads_entries(THREADS)
    stock, grouped = (
        await opened(pg_database, group_commit=False),
        await opened(second_pg_database),
    )
    assert type(stock.saver) is SaverPool and isinstance(grouped.saver, GroupCommitSaverPool)
    try:
        for entries in by_thread.values():
            await in_order(stock.saver, entries)
        await asyncio.gather(*(in_order(grouped.saver, e) for e in by_thread.values()))
        writes = sum(len(e) for e in by_thread.values())
        assert grouped.saver.committed == writes
        # Threads shared transactions: fewer commits than writes.
        assert grouped.saver.transactions < writes
        for name in TABLES:
            expected = table(pg_database, name)
            assert expected and table(second_pg_database, name) == expected, name
        for thread in by_thread:
            config: RunnableConfig = {"configurable": {"thread_id": thread}}
            assert await grouped.saver.aget_tuple(config) == await stock.saver.aget_tuple(config)
    finally:
        await stock.close()
        await grouped.close()


async def test_aput_answers_the_config_of_the_stored_checkpoint(
    grouped: GroupCommitSaverPool,
) -> None:
    entry = next(e for e in await journalled("t1") if isinstance(e, PutCheckpoint))
    got = await call(grouped, entry)
    assert got == {
        "configurable": {
            "thread_id": "t1",
            "checkpoint_ns": "",
            "checkpoint_id": entry.checkpoint["id"],
        }
    }


async def test_each_threads_checkpoints_commit_in_the_order_they_were_put(
    pg_database: str, grouped: GroupCommitSaverPool, small_batches: None
) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(ORDER_LOG)
    by_thread = await threads_entries(THREADS)
    put = {t: [e for e in es if isinstance(e, PutCheckpoint)] for t, es in by_thread.items()}
    # Every write is queued before the first commits: no caller waits for its
    # checkpoint N before putting N+1, so only the queue keeps the order.
    calls = [call(grouped, e) for round_ in zip(*put.values(), strict=True) for e in round_]
    await asyncio.gather(*calls)
    assert grouped.transactions >= len(calls) / 5
    with psycopg.connect(pg_database) as conn:
        logged = conn.execute("SELECT thread_id, checkpoint_id FROM put_order ORDER BY seq")
        rows = logged.fetchall()
    for thread, entries in put.items():
        assert [c for t, c in rows if t == thread] == [e.checkpoint["id"] for e in entries]


async def test_a_bad_write_in_a_batch_fails_only_its_caller(
    pg_database: str, grouped: GroupCommitSaverPool
) -> None:
    by_thread = await threads_entries(THREADS)
    first = {t: next(e for e in es if isinstance(e, PutCheckpoint)) for t, es in by_thread.items()}
    # jsonb cannot hold \u0000: PostgreSQL refuses that checkpoint (the database is fine).
    first["t3"] = with_text(first["t3"], "a\0")
    outcomes = await asyncio.gather(
        *(call(grouped, e) for e in first.values()), return_exceptions=True
    )
    failed = {t for t, o in zip(first, outcomes, strict=True) if isinstance(o, BaseException)}
    assert failed == {"t3"}
    assert isinstance(outcomes[3], psycopg.DataError)
    stored = {row[0] for row in table(pg_database, "checkpoints")}
    assert stored == set(first) - {"t3"}


# Inline values as the stock saver's jsonb takes them: non-ASCII text, a surrogate pair
# as two code points (json.dumps escapes it, PostgreSQL stores the one character), JSON's
# escapes, an integer past 64 bits, floats; and as it refuses them: a NUL and a lone
# surrogate (json.dumps escapes both, PostgreSQL refuses both).
STORABLE: list[Any] = [
    "é 漢字 😀",
    "\ud83d\ude00",
    'tab\t quote" backslash\\ newline\n \x7f',
    2**70,
    0.1,
    1e300,
]
REFUSED = ["a\0", "\ud800 lone"]


async def test_odd_inline_values_land_or_fail_as_the_stock_saver_writes_them(
    pg_database: str, second_pg_database: str
) -> None:
    """A checkpoint's jsonb is dumped when its write is serialised (`statements`), not by
    psycopg at the write: the rows are still the stock saver's, its errors the same, in a
    group's one statement and one write at a time alike."""
    by_thread = await threads_entries(len(STORABLE) + len(REFUSED))
    odd = [
        with_text(next(e for e in es if isinstance(e, PutCheckpoint)), value)
        for es, value in zip(by_thread.values(), STORABLE + REFUSED, strict=True)
    ]
    storable, refused = odd[: len(STORABLE)], odd[len(STORABLE) :]
    stock, grouped = (
        await opened(pg_database, group_commit=False),
        await opened(second_pg_database),
    )
    try:
        for entry in storable:
            await call(stock.saver, entry)
        await asyncio.gather(*(call(grouped.saver, e) for e in storable))
        assert grouped.saver.transactions == 2  # alone, then a group
        for entry in refused:
            with pytest.raises(psycopg.DataError) as stock_error:
                await call(stock.saver, entry)
            with pytest.raises(psycopg.DataError) as our_error:
                await call(grouped.saver, entry)
            assert type(our_error.value) is type(stock_error.value)
    finally:
        await stock.close()
        await grouped.close()
    expected = table(pg_database, "checkpoints")
    assert len(expected) == len(storable) and table(second_pg_database, "checkpoints") == expected


async def test_a_write_that_cannot_be_serialised_fails_only_its_caller(
    pg_database: str, grouped: GroupCommitSaverPool
) -> None:
    by_thread = await threads_entries(4)
    writes = {t: next(e for e in es if isinstance(e, PutWrites)) for t, es in by_thread.items()}
    bad = writes["t2"]
    writes["t2"] = PutWrites(bad.config, (("steps", object()),), bad.task_id, bad.task_path)
    outcomes = await asyncio.gather(
        *(call(grouped, e) for e in writes.values()), return_exceptions=True
    )
    assert [isinstance(o, Exception) for o in outcomes] == [False, False, True, False]
    assert {row[0] for row in table(pg_database, "checkpoint_writes")} == {"t0", "t1", "t3"}


@pytest.mark.parametrize("planned_on", ["loop", "worker"])
async def test_a_checkpoint_json_refuses_in_a_group_fails_only_its_caller(
    pg_database: str,
    grouped: GroupCommitSaverPool,
    monkeypatch: pytest.MonkeyPatch,
    planned_on: str,
) -> None:
    """A checkpoint's jsonb is dumped when a group is serialised (`statements`), on the
    loop or, past a big value, on a worker thread: metadata json.dumps refuses fails that
    write's caller alone, and the rest of the group commits."""
    on_threads: list[tuple[str, bool]] = []
    plan = groupcommit._plan

    def recorded(saver: Any, items: list[Any], budget: int | None = None) -> Any:
        main = threading.current_thread() is threading.main_thread()
        on_threads.extend((i.config["configurable"]["thread_id"], main) for i in items)
        return plan(saver, items, budget)

    monkeypatch.setattr(groupcommit, "_plan", recorded)
    by_thread = await threads_entries(6)
    first = {t: next(e for e in es if isinstance(e, PutCheckpoint)) for t, es in by_thread.items()}
    if planned_on == "worker":  # past INLINE_BYTES: the rest of the group goes to a thread
        first["t1"] = with_text(first["t1"], "x" * (groupcommit.INLINE_BYTES + 1))
    bad = first["t4"]
    odd: Any = {**bad.metadata, "odd": object()}
    first["t4"] = PutCheckpoint(bad.config, bad.checkpoint, odd, bad.versions)
    outcomes = await asyncio.gather(
        *(call(grouped, e) for e in first.values()), return_exceptions=True
    )
    assert grouped.transactions == 2  # t0 alone, then the rest in one group
    assert ("t4", planned_on == "loop") in on_threads
    failed = {t: o for t, o in zip(first, outcomes, strict=True) if isinstance(o, BaseException)}
    assert list(failed) == ["t4"] and isinstance(failed["t4"], TypeError)
    assert {row[0] for row in table(pg_database, "checkpoints")} == set(first) - {"t4"}


async def test_cancelled_callers_lose_nobody_elses_writes(
    pg_database: str, grouped: GroupCommitSaverPool
) -> None:
    by_thread = await threads_entries(8)
    first = {t: next(e for e in es if isinstance(e, PutCheckpoint)) for t, es in by_thread.items()}
    in_flight = {
        t: asyncio.ensure_future(call(grouped, first[t])) for t in ("t0", "t1", "t2", "t3")
    }
    # t0 commits alone (nothing was queued), t1-t3 queue behind it; let their group's
    # transaction start: its writes are taken from the queue (polled without sleeping,
    # so the short window it is in flight is not missed).
    for _ in range(200_000):
        await asyncio.sleep(0)
        if not grouped._queue and grouped._flusher is not None:
            break
    assert not grouped._queue and grouped._flusher is not None
    queued = {t: asyncio.ensure_future(call(grouped, first[t])) for t in ("t4", "t5", "t6", "t7")}
    await asyncio.sleep(0)
    in_flight["t1"].cancel()
    queued["t5"].cancel()
    outcomes = await asyncio.gather(*in_flight.values(), *queued.values(), return_exceptions=True)
    cancelled = [isinstance(o, asyncio.CancelledError) for o in outcomes]
    assert cancelled == [False, True, False, False, False, True, False, False]
    assert not any(isinstance(o, Exception) for o in outcomes)
    checkpoints = {row[0] for row in table(pg_database, "checkpoints")}
    # t1's transaction was already in flight: it commits whole with the others.
    # t5 was still queued: nothing of it is written.
    assert checkpoints == set(first) - {"t5"}
    with_blobs = {
        t for t in checkpoints if any(map(is_blob, first[t].checkpoint["channel_values"].values()))
    }
    assert with_blobs and {row[0] for row in table(pg_database, "checkpoint_blobs")} == with_blobs
    # The saver still works after the cancellations.
    assert await call(grouped, first["t5"]) is not None


async def test_empty_writes_alongside_others_change_nothing(
    pg_database: str, grouped: GroupCommitSaverPool
) -> None:
    by_thread = await threads_entries(2)
    writes = [next(e for e in es if isinstance(e, PutWrites)) for es in by_thread.values()]
    empty = PutWrites(writes[0].config, (), "empty-task", "")
    await asyncio.gather(*(call(grouped, e) for e in (writes[0], empty, writes[1])))
    rows = table(pg_database, "checkpoint_writes")
    assert {r[0] for r in rows} == {"t0", "t1"} and all(r[3] != "empty-task" for r in rows)


async def test_a_lone_write_commits_in_its_callers_task(
    pg_database: str, grouped: GroupCommitSaverPool
) -> None:
    """With nothing else queued or in flight a write needs no flusher: it commits in
    its caller's task, and a write arriving meanwhile queues behind it."""
    by_thread = await threads_entries(2)
    first = {t: next(e for e in es if isinstance(e, PutCheckpoint)) for t, es in by_thread.items()}
    await call(grouped, first["t0"])
    assert (grouped.transactions, grouped.committed) == (1, 1)
    assert grouped._flusher is None and not grouped._queue
    assert {row[0] for row in table(pg_database, "checkpoints")} == {"t0"}
    lone = asyncio.ensure_future(call(grouped, first["t0"]))
    await asyncio.sleep(0)  # the lone write is in flight
    behind = asyncio.ensure_future(call(grouped, first["t1"]))
    await asyncio.sleep(0)
    assert grouped._alone and len(grouped._queue) == 1
    await asyncio.gather(lone, behind)
    assert grouped.committed == 3
    assert {row[0] for row in table(pg_database, "checkpoints")} == {"t0", "t1"}


async def test_a_group_of_a_few_writes_is_serialised_on_the_loop(
    grouped: GroupCommitSaverPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to INLINE_PLAN writes a group are serialised on the event loop's thread: the
    hop to a worker thread and back cost more than serialising them (issue 15)."""
    planned: list[tuple[int, bool]] = []
    plan = groupcommit._plan

    def recorded(saver: Any, items: list[Any], budget: int | None = None) -> Any:
        planned.append((len(items), threading.current_thread() is threading.main_thread()))
        return plan(saver, items, budget)

    monkeypatch.setattr(groupcommit, "_plan", recorded)
    by_thread = await threads_entries(THREADS)
    first = [next(e for e in es if isinstance(e, PutCheckpoint)) for es in by_thread.values()]
    await asyncio.gather(*(call(grouped, e) for e in first))
    assert max(n for n, _ in planned) == THREADS - 1 <= groupcommit.INLINE_PLAN
    assert all(on_loop for _, on_loop in planned)


def with_big_value(entry: PutCheckpoint, size: int) -> PutCheckpoint:
    """The checkpoint with one more channel, a value of `size` bytes stored as a blob."""
    values = {**entry.checkpoint["channel_values"], "big": ["x" * size]}
    versions = {**entry.versions, "big": "00000000000000000000000000000001.0.5"}
    checkpoint = {**entry.checkpoint, "channel_values": values}
    checkpoint["channel_versions"] = {**entry.checkpoint["channel_versions"], **versions}
    return PutCheckpoint(entry.config, checkpoint, entry.metadata, versions)


async def test_a_group_of_big_writes_is_not_serialised_on_the_loop(
    grouped: GroupCommitSaverPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INLINE_PLAN promises that big values do not hold the loop up for every other run;
    it counts writes, not bytes, so a group of up to 16 writes of MBs each is serialised
    on the loop's thread in one go (16 x 1 MB of messages: ~30 ms more of the loop held,
    16 x 4 MB: ~115 ms; review of pg16). The lone write before the group is serialised on
    the loop as the stock saver does; at most one write of the group may be."""
    size = 1 << 20
    on_loop: list[int] = []
    real = groupcommit.statements

    def recorded(saver: Any, items: list[Any]) -> Any:
        if threading.current_thread() is threading.main_thread():
            on_loop.append(len(items))
        return real(saver, items)

    monkeypatch.setattr(groupcommit, "statements", recorded)
    by_thread = await threads_entries(THREADS)
    big = [
        with_big_value(next(e for e in es if isinstance(e, PutCheckpoint)), size)
        for es in by_thread.values()
    ]
    await asyncio.gather(*(call(grouped, e) for e in big))
    assert grouped.committed == THREADS and grouped.transactions == 2  # alone, then a group
    assert sum(on_loop) <= 2, f"{sum(on_loop)} writes of {size} bytes serialised on the loop"


def counted_statements(monkeypatch: pytest.MonkeyPatch, url: str) -> list[str]:
    """The statements (and executemany calls) sent on any async cursor to the database
    of `url` from now on (not another test's leftovers on this worker: CI, once)."""
    sent: list[str] = []
    execute, executemany = psycopg.AsyncCursor.execute, psycopg.AsyncCursor.executemany
    dbname = conninfo_to_dict(url)["dbname"]

    async def one(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if self.connection.info.dbname == dbname:
            sent.append(str(query))
        return await execute(self, query, *args, **kwargs)

    async def many(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if self.connection.info.dbname == dbname:
            sent.append(f"many: {query}")
        return await executemany(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", one)
    monkeypatch.setattr(psycopg.AsyncCursor, "executemany", many)
    return sent


async def test_a_group_is_one_statement(
    grouped: GroupCommitSaverPool, monkeypatch: pytest.MonkeyPatch, pg_database: str
) -> None:
    """A group's rows go in one statement (its own transaction), not BEGIN, a statement
    and a Bind per row, and COMMIT, each a send of its own (issue 15)."""
    by_thread = await threads_entries(6)
    sent = counted_statements(monkeypatch, pg_database)
    await asyncio.gather(*(in_order(grouped, e) for e in by_thread.values()))
    assert grouped.transactions < grouped.committed
    # A group whose statement failed is written one by one (logged): a CI run saw one,
    # 17 statements for 16 transactions. Each transaction is still one statement.
    assert len(sent) == grouped.transactions + grouped.split
    assert all(s.startswith("WITH w0 AS (INSERT INTO ") for s in sent)


async def test_a_row_put_twice_in_one_group_lands_as_the_two_puts_in_turn(
    pg_database: str, second_pg_database: str
) -> None:
    """One multi-row upsert may not touch a row twice: the rows of one key are folded
    into the one the puts in turn leave (the first's kept columns, the last's updated
    ones), and an insert that does nothing on a conflict keeps the first."""
    entries = await journalled("t1")
    cp = next(e for e in entries if isinstance(e, PutCheckpoint))
    again = PutCheckpoint(cp.config, cp.checkpoint, {**cp.metadata, "note": "again"}, cp.versions)
    put = next(e for e in entries if isinstance(e, PutWrites))
    wrote = next(e for e in entries if isinstance(e, PutWrites) and e is not put)
    # __error__ is one of the special channels: upserted (the others are inserted).
    errors = [PutWrites(put.config, (("__error__", text),), "task", "") for text in ("a", "b")]
    plain = [PutWrites(wrote.config, (("steps", [text]),), "task", "") for text in ("c", "d")]
    puts: list[PutCheckpoint | PutWrites] = [cp, again, *errors, *plain]
    stock, grouped = (
        await opened(pg_database, group_commit=False),
        await opened(second_pg_database),
    )
    assert isinstance(grouped.saver, GroupCommitSaverPool)
    try:
        await in_order(stock.saver, puts)
        lone = next(e for e in entries[1:] if isinstance(e, PutCheckpoint))
        # The first goes alone; the others queue behind it and commit as one group.
        await asyncio.gather(*(call(grouped.saver, e) for e in [lone, *puts]))
        assert grouped.saver.transactions == 2
        for name in TABLES:
            expected = table(pg_database, name)
            got = table(second_pg_database, name)
            if name == "checkpoints":  # the lone one is only in the grouped database
                got = [r for r in got if r[2] != lone.checkpoint["id"]]
            elif name == "checkpoint_blobs":
                continue  # the lone checkpoint's channel versions
            assert expected and got == expected, name
    finally:
        await stock.close()
        await grouped.close()


async def test_a_batch_that_waits_out_the_lock_bound_fails_whole(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another session holds the table: the batch's callers all get the lock error at
    once, not each write alone waiting the whole bound again, one after another
    (review of pgfault)."""
    backend = PostgresBackend(create_postgres_checkpointer(pg_database, lock_timeout=0.2))
    await backend.open()
    alone: list[int] = []
    one_by_one = GroupCommitSaverPool._one_by_one

    async def counted(self: GroupCommitSaverPool, ready: list[Any]) -> None:
        alone.append(len(ready))
        await one_by_one(self, ready)

    monkeypatch.setattr(GroupCommitSaverPool, "_one_by_one", counted)
    try:
        saver = backend.saver
        assert isinstance(saver, GroupCommitSaverPool)
        firsts = [entries[0] for entries in (await threads_entries(4)).values()]
        with psycopg.connect(pg_database, autocommit=True) as admin, admin.transaction():
            admin.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
            outcomes = await asyncio.gather(
                *(call(saver, entry) for entry in firsts), return_exceptions=True
            )
        assert all(isinstance(o, psycopg.errors.LockNotAvailable) for o in outcomes), outcomes
        assert alone == []
    finally:
        await backend.close()
