"""One behaviour suite for the registry, run on a SQLite file, SQLite :memory: and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from code_hero.errors import BadInputError, ConflictError, NotFoundError
from code_hero.persistence.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from code_hero.persistence.records import (
    EventRecord,
    Registry,
    RunFilter,
    RunRecord,
    RunStatus,
    ThreadFilter,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.persistence.registry import PostgresRegistry, SqliteRegistry

KINDS = ["sqlite-file", "sqlite-memory", "postgres"]
PG_KWARGS: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}


def make_pool(url: str) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(url, kwargs=PG_KWARGS, min_size=2, max_size=4, open=False)


@pytest.fixture(params=KINDS)
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    """A registry, set up, on a fresh database of each kind."""
    if request.param == "postgres":
        pool = make_pool(request.getfixturevalue("pg_database"))
        await pool.open()
        try:
            reg: Registry = PostgresRegistry(pool)
            await reg.setup()
            yield reg
        finally:
            await pool.close()
        return
    path = ":memory:" if request.param == "sqlite-memory" else str(tmp_path / "reg.sqlite")
    async with aiosqlite.connect(path) as conn:
        await conn.execute("PRAGMA foreign_keys = ON")  # as the backends open it
        reg = SqliteRegistry(conn, asyncio.Lock())
        await reg.setup()
        yield reg


def at(seconds: float) -> datetime:
    return datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def run(run_id: str, thread_id: str = "t1", **kw: Any) -> RunRecord:
    fields: dict[str, Any] = {"graph": "g", "status": RunStatus.PENDING, **kw}
    return RunRecord(run_id=run_id, thread_id=thread_id, **fields)


def events(run_id: str, thread_id: str, *seqs: int, type: str = "token") -> list[EventRecord]:
    return [
        EventRecord(run_id, thread_id, s, type, {"n": s, "text": f"tok{s}"}, at(s)) for s in seqs
    ]


def thread(thread_id: str, when: datetime | None = None, **kw: Any) -> ThreadRecord:
    """A thread record updated (and created) `when`, by default now."""
    when = when or datetime.now(UTC)
    fields: dict[str, Any] = {"user_id": None, "status": ThreadStatus.IDLE, "metadata": {}, **kw}
    return ThreadRecord(thread_id=thread_id, created_at=when, updated_at=when, **fields)


async def put(
    registry: Registry, thread_id: str, when: datetime | None = None, **kw: Any
) -> ThreadRecord:
    """A thread stored as given (as a copy stores it), as read back."""
    await registry.put_thread(thread(thread_id, when, **kw))
    stored = await registry.get_thread(thread_id)
    assert stored is not None
    return stored


def newest_first(records: list[ThreadRecord]) -> list[str]:
    ordered = sorted(records, key=lambda r: (r.updated_at, r.thread_id), reverse=True)
    return [r.thread_id for r in ordered]


# --- setup --------------------------------------------------------------------


async def test_setup_is_idempotent_and_keeps_data(registry: Registry) -> None:
    await put(registry, "t1", metadata={"a": 1})
    await registry.setup()
    await registry.setup()
    thread = await registry.get_thread("t1")
    assert thread is not None and thread.metadata == {"a": 1}


async def test_concurrent_setup_on_postgres(pg_database: str) -> None:
    pool = make_pool(pg_database)
    await pool.open()
    try:
        await asyncio.gather(*(PostgresRegistry(pool).setup() for _ in range(3)))
        reg = PostgresRegistry(pool)
        await reg.touch_threads({"t1": None})
        assert await reg.thread_ids() == ["t1"]
    finally:
        await pool.close()


async def test_concurrent_setup_on_two_sqlite_connections(tmp_path: Path) -> None:
    path = str(tmp_path / "two.sqlite")
    async with aiosqlite.connect(path) as one, aiosqlite.connect(path) as two:
        regs = [SqliteRegistry(one, asyncio.Lock()), SqliteRegistry(two, asyncio.Lock())]
        await asyncio.gather(*(r.setup() for r in regs))
        await regs[0].touch_threads({"t1": None})
        assert await regs[1].thread_ids() == ["t1"]


async def test_lives_beside_the_checkpoint_saver(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Saver and registry share a database (and on SQLite a connection and its lock)."""
    config: Any = {"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}

    async def exercise(saver: Any, reg: Registry) -> None:
        await asyncio.gather(saver.setup(), reg.setup())
        await asyncio.gather(
            saver.aput(config, empty_checkpoint(), {}, {}),
            *(reg.touch_threads({f"t{i}": "u"}) for i in range(20)),
            *(reg.put_thread(thread(f"t{i}", metadata={"i": i})) for i in range(20)),
        )
        assert await saver.aget_tuple(config) is not None
        assert len(await reg.thread_ids()) == 20

    async with aiosqlite.connect(str(tmp_path / "cp.sqlite")) as conn:
        saver = AsyncSqliteSaver(conn)
        await exercise(saver, SqliteRegistry(conn, saver.lock))
    pool = make_pool(request.getfixturevalue("pg_database"))
    await pool.open()
    try:
        await exercise(AsyncPostgresSaver(pool), PostgresRegistry(pool))
    finally:
        await pool.close()


# --- threads ------------------------------------------------------------------


async def test_put_thread_stores_a_thread_as_given(registry: Registry) -> None:
    plus2 = timezone(timedelta(hours=2))
    record = thread("t1", at(1), user_id="u1", metadata={"k": "v"}, status=ThreadStatus.BUSY)
    await registry.put_thread(replace(record, created_at=record.created_at.astimezone(plus2)))
    stored = await registry.get_thread("t1")
    assert stored == record and stored.created_at.utcoffset() == timedelta(0)

    # Again: the stored thread is replaced, timestamps included; a copy is idempotent.
    replaced = replace(
        record, user_id="u2", metadata={"other": [1, 2]}, status=ThreadStatus.IDLE, updated_at=at(2)
    )
    await registry.put_thread(replaced)
    await registry.put_thread(replaced)
    assert await registry.get_thread("t1") == replaced
    assert await registry.get_thread("missing") is None


async def test_a_run_creates_its_thread_and_later_runs_keep_it(registry: Registry) -> None:
    before = datetime.now(UTC)
    await registry.admit_run(
        run("r1", "t1", user_id="u1", metadata={"k": "v"}), reject_if_busy=False
    )
    created = await registry.get_thread("t1")
    assert created is not None
    assert (created.user_id, created.status) == ("u1", ThreadStatus.BUSY)
    # A thread a run creates starts with that run's metadata.
    assert created.metadata == {"graph": "g", "k": "v"}
    assert created.created_at == created.updated_at >= before - timedelta(seconds=1)
    assert created.created_at.utcoffset() == timedelta(0)

    await registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    await registry.admit_run(run("r2", "t1", user_id="u2", metadata={"x": 1}), reject_if_busy=False)
    again = await registry.get_thread("t1")
    assert again is not None
    assert (again.user_id, again.metadata) == ("u1", {"graph": "g", "k": "v"})
    assert again.status is ThreadStatus.BUSY
    assert again.created_at == created.created_at and again.updated_at > created.updated_at


async def test_finish_run_sets_the_thread_status_and_bumps_updated_at(registry: Registry) -> None:
    await registry.admit_run(run("r1", "t1"), reject_if_busy=False)
    before = await registry.get_thread("t1")
    assert before is not None
    finished, waiting = await registry.finish_run(
        "r1", ThreadStatus.INTERRUPTED, status=RunStatus.INTERRUPTED
    )
    assert finished is not None and finished.status is RunStatus.INTERRUPTED and not waiting
    after = await registry.get_thread("t1")
    assert after is not None and after.status is ThreadStatus.INTERRUPTED
    assert after.updated_at > before.updated_at

    # A thread with another unfinished run stays BUSY: the run's end says so.
    await registry.admit_run(run("r2", "t2"), reject_if_busy=False)
    await registry.admit_run(run("r3", "t2"), reject_if_busy=False)
    _, waiting = await registry.finish_run("r2", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    busy = await registry.get_thread("t2")
    assert waiting and busy is not None and busy.status is ThreadStatus.BUSY

    assert await registry.finish_run("missing", ThreadStatus.BUSY, status=RunStatus.SUCCESS) == (
        None,
        False,
    )
    assert await registry.get_thread("missing") is None


async def test_touch_threads_creates_missing_and_keeps_owner(registry: Registry) -> None:
    old = await put(registry, "owned", at(1), user_id="alice", metadata={"keep": True})
    await put(registry, "orphan", at(2))
    await registry.touch_threads({"owned": None, "orphan": "bob", "new": "carol", "anon": None})

    got = await registry.get_threads(["owned", "orphan", "new", "anon"])
    assert got["owned"].user_id == "alice"
    assert got["owned"].metadata == {"keep": True}
    assert got["owned"].updated_at > old.updated_at
    assert got["orphan"].user_id == "bob"
    assert got["new"].user_id == "carol" and got["new"].status is ThreadStatus.IDLE
    assert got["new"].metadata == {}
    assert got["anon"].user_id is None
    # One batch, one time: every touched thread has the same updated_at.
    assert len({r.updated_at for r in got.values()}) == 1

    await registry.touch_threads({"owned": "mallory"})
    owned = await registry.get_thread("owned")
    assert owned is not None and owned.user_id == "alice"


async def test_get_threads_and_thread_ids(registry: Registry) -> None:
    a = await put(registry, "a", at(1))
    await put(registry, "b", at(2))
    assert await registry.get_threads([]) == {}
    got = await registry.get_threads(["a", "b", "a", "nope"])
    assert sorted(got) == ["a", "b"] and got["a"] == a
    assert sorted(await registry.thread_ids()) == ["a", "b"]
    assert await registry.thread_ids(updated_before=a.updated_at) == []
    assert await registry.thread_ids(updated_before=a.updated_at + timedelta(microseconds=1)) == [
        "a"
    ]


async def test_paging_250_threads_yields_each_once_in_order(registry: Registry) -> None:
    records = [await put(registry, f"s{i:03}", at(i)) for i in range(150)]
    # 100 threads touched in one batch share updated_at: thread_id breaks the tie.
    await registry.touch_threads({f"b{i:03}": None for i in range(100)})
    records += (await registry.get_threads([f"b{i:03}" for i in range(100)])).values()
    expected = newest_first(records)

    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = await registry.list_threads(ThreadFilter(), first=20, after=after)
        seen += [t.thread_id for t in page.items]
        pages += 1
        if pages == 3:
            # An already-listed thread moves to the front: later pages do not repeat it.
            await registry.touch_threads({seen[5]: None})
        if not page.has_next_page:
            break
        assert len(page.items) == 20
        after = page.end_cursor
    assert pages == 13 and len(page.items) == 10
    assert seen == expected

    first = await registry.list_threads(ThreadFilter(), first=1)
    assert [t.thread_id for t in first.items] == [expected[5]]


async def test_list_threads_filters(registry: Registry) -> None:
    t1 = await put(registry, "t1", at(1), user_id="u1")
    t2 = await put(registry, "t2", at(2), user_id="u2", status=ThreadStatus.BUSY)
    t3 = await put(registry, "t3", at(3), user_id="u1", status=ThreadStatus.BUSY)
    assert t1.updated_at < t2.updated_at < t3.updated_at

    async def ids(**kw: Any) -> list[str]:
        page = await registry.list_threads(ThreadFilter(**kw), first=10)
        return [t.thread_id for t in page.items]

    assert await ids() == ["t3", "t2", "t1"]
    assert await ids(user_id="u1") == ["t3", "t1"]
    assert await ids(user_id="nobody") == []
    assert await ids(status=ThreadStatus.BUSY) == ["t3", "t2"]
    assert await ids(user_id="u1", status=ThreadStatus.BUSY) == ["t3"]
    assert await ids(updated_after=t1.updated_at) == ["t3", "t2"]  # strictly after
    assert await ids(updated_before=t3.updated_at) == ["t2", "t1"]  # strictly before
    assert await ids(updated_after=t1.updated_at, updated_before=t3.updated_at) == ["t2"]
    # Any aware datetime works, whatever its zone.
    plus2 = timezone(timedelta(hours=2))
    assert await ids(updated_after=t2.updated_at.astimezone(plus2)) == ["t3"]

    # Filters and cursors combine: page 2 of user u1's threads.
    page = await registry.list_threads(ThreadFilter(user_id="u1"), first=1)
    assert page.has_next_page
    rest = await registry.list_threads(ThreadFilter(user_id="u1"), first=1, after=page.end_cursor)
    assert [t.thread_id for t in rest.items] == ["t1"] and not rest.has_next_page


async def test_metadata_containment(registry: Registry) -> None:
    await put(
        registry,
        "full",
        metadata={
            "env": "prod",
            "n": 3,
            "flag": True,
            "none": None,
            "tags": ["a", "b"],
            "nested": {"team": {"name": "core", "size": 5}, "x": "y"},
            "dotted.key": "d",
            "it's": "q",
            'say "hi"': {'in"ner': "quoted"},
            "back\\slash": 1,
        },
    )
    await put(
        registry,
        "other",
        metadata={"env": "dev", "n": "3", "flag": 1, "nested": {"team": "core"}, "tags": "a"},
    )
    await put(registry, "empty")

    async def ids(metadata: dict[str, Any]) -> list[str]:
        page = await registry.list_threads(ThreadFilter(metadata=metadata), first=10)
        return sorted(t.thread_id for t in page.items)

    assert await ids({}) == ["empty", "full", "other"]
    assert await ids({"env": "prod"}) == ["full"]
    assert await ids({"env": "prod", "n": 3}) == ["full"]
    assert await ids({"env": "prod", "n": 4}) == []
    assert await ids({"n": 3}) == ["full"]  # the string "3" is not the number 3
    assert await ids({"n": 3.0}) == ["full"]
    assert await ids({"flag": True}) == ["full"]  # true is not 1
    assert await ids({"flag": 1}) == ["other"]
    assert await ids({"none": None}) == ["full"]  # a null value is not a missing key
    assert await ids({"missing": None}) == []
    assert await ids({"tags": ["a", "b"]}) == ["full"]
    assert await ids({"tags": "a"}) == ["other"]
    assert await ids({"nested": {"team": {"name": "core"}}}) == ["full"]
    assert await ids({"nested": {"team": {"name": "core", "size": 5}, "x": "y"}}) == ["full"]
    assert await ids({"nested": {"team": {"name": "other"}}}) == []
    assert await ids({"nested": {"team": "core"}}) == ["other"]
    assert await ids({"nested": {"team": {}}}) == ["full"]
    assert await ids({"nested": {}}) == ["full", "other"]
    assert await ids({"dotted.key": "d"}) == ["full"]
    assert await ids({"dotted": {"key": "d"}}) == []
    assert await ids({"it's": "q"}) == ["full"]
    assert await ids({'say "hi"': {'in"ner': "quoted"}}) == ["full"]
    assert await ids({'say "hi"': {'in"ner': "other"}}) == []
    assert await ids({"back\\slash": 1}) == ["full"]


async def test_malformed_cursor_is_bad_input(registry: Registry) -> None:
    await registry.admit_run(run("r1"), reject_if_busy=False)
    run_cursor = (await registry.list_runs(RunFilter(), first=1)).end_cursor
    assert run_cursor is not None

    def b64(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()

    for bad in [
        "garbage!",
        "",
        "e30=",  # {}
        b64(["thread", "not a time", "t1"]),
        b64(["thread", "2025-01-01T00:00:00", "t1"]),  # naive
        b64(["thread", "2025-01-01T00:00:00+00:00", 7]),
        run_cursor,  # a cursor of another listing
    ]:
        with pytest.raises(BadInputError):
            await registry.list_threads(ThreadFilter(), first=5, after=bad)
    with pytest.raises(BadInputError):
        await registry.list_runs(RunFilter(), first=5, after="garbage!")
    with pytest.raises(BadInputError):
        await registry.list_threads(ThreadFilter(), first=-1)


async def test_delete_thread_deletes_runs_and_events(registry: Registry) -> None:
    for run_id, thread_id in [("r1", "t1"), ("r2", "t1"), ("r3", "t2")]:
        await registry.admit_run(
            run(run_id, thread_id), reject_if_busy=False, events=events(run_id, thread_id, 1, 2, 3)
        )

    assert await registry.delete_thread("t1") == (True, 2)
    assert await registry.get_thread("t1") is None
    assert await registry.get_runs(["r1", "r2", "r3"]) == {"r3": await registry.get_run("r3")}
    assert await registry.list_events("r1") == [] and await registry.last_seq("r2") == 0
    assert len(await registry.list_events("r3")) == 3
    assert await registry.delete_thread("t1") == (False, 0)
    # A run belongs to a thread: none is stored for a thread that is gone.
    with pytest.raises(NotFoundError):
        await registry.put_run(run("r4", "t1"))


# --- runs ---------------------------------------------------------------------


async def test_admit_get_update_run(registry: Registry) -> None:
    before = datetime.now(UTC)
    created, busy = await registry.admit_run(
        run("r1", input={"messages": ["hi"]}, metadata={"m": 1}, config={"c": {"d": 2}}),
        reject_if_busy=False,
    )
    assert created is not None and busy is None
    assert created.created_at is not None and created.created_at >= before - timedelta(seconds=1)
    assert created.input == {"messages": ["hi"]} and created.output is None
    assert await registry.get_run("r1") == created
    with pytest.raises(ConflictError):
        await registry.admit_run(run("r1"), reject_if_busy=False)

    started = datetime(2025, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    updated = await registry.update_run(
        "r1",
        status=RunStatus.RUNNING,
        started_at=started,
        lease_owner="w1",
        lease_expires_at=started + timedelta(seconds=30),
    )
    assert updated is not None
    assert updated.status is RunStatus.RUNNING and updated.lease_owner == "w1"
    assert updated.started_at == started and updated.started_at.utcoffset() == timedelta(0)
    assert updated.input == created.input and updated.metadata == {"m": 1}

    done = await registry.update_run(
        "r1", status=RunStatus.ERROR, output=[1, "two"], error="boom", lease_owner=None
    )
    assert done is not None and done.status.finished
    assert (done.output, done.error, done.lease_owner) == ([1, "two"], "boom", None)
    assert done.started_at == started
    assert await registry.get_run("r1") == done
    assert await registry.update_run("missing", status=RunStatus.RUNNING) is None
    assert await registry.update_run("r1") == done
    with pytest.raises(TypeError):
        await registry.update_run("r1", not_a_field=1)


async def test_list_runs_paging_and_filters(registry: Registry) -> None:
    for i in range(25):
        await registry.admit_run(
            run(
                f"r{i:02}",
                thread_id=f"t{i % 2}",
                graph="g" if i % 3 else "h",
                user_id="u1" if i < 10 else "u2",
                status=RunStatus.SUCCESS if i % 5 == 0 else RunStatus.PENDING,
                created_at=at(i // 2),  # pairs share created_at: run_id breaks the tie
            ),
            reject_if_busy=False,
        )
    newest_first = [f"r{i:02}" for i in reversed(range(25))]

    seen: list[str] = []
    after: str | None = None
    while True:
        page = await registry.list_runs(RunFilter(), first=7, after=after)
        seen += [r.run_id for r in page.items]
        if not page.has_next_page:
            break
        after = page.end_cursor
    assert seen == newest_first

    async def ids(**kw: Any) -> list[str]:
        return [r.run_id for r in (await registry.list_runs(RunFilter(**kw), first=50)).items]

    assert await ids(thread_id="t1") == [r for r in newest_first if int(r[1:]) % 2 == 1]
    assert await ids(graph="h") == [r for r in newest_first if int(r[1:]) % 3 == 0]
    assert await ids(user_id="u1") == [r for r in newest_first if int(r[1:]) < 10]
    assert await ids(status=RunStatus.SUCCESS) == ["r20", "r15", "r10", "r05", "r00"]
    assert await ids(thread_id="t0", status=RunStatus.SUCCESS, graph="h") == ["r00"]
    got = await registry.get_runs(["r03", "r04", "zz"])
    assert sorted(got) == ["r03", "r04"] and got["r03"].created_at == at(1)


async def test_put_run_is_idempotent_upsert(registry: Registry) -> None:
    await registry.touch_threads({"t1": None})
    record = run(
        "r1",
        status=RunStatus.INTERRUPTED,
        input={"a": [1, 2]},
        output={"b": None},
        error=None,
        metadata={"m": "x"},
        config={"configurable": {"k": 1}},
        user_id="u1",
        multitask="ENQUEUE",
        created_at=at(1),
        started_at=at(2),
        finished_at=at(3),
        lease_owner="w",
        lease_expires_at=at(4),
    )
    await registry.put_run(record)
    await registry.put_run(record)
    assert await registry.get_run("r1") == record
    page = await registry.list_runs(RunFilter(), first=10)
    assert page.items == [record]

    changed = replace(record, status=RunStatus.SUCCESS, output=None, lease_owner=None)
    await registry.put_run(changed)
    assert await registry.get_run("r1") == changed


async def test_delete_run_deletes_its_events(registry: Registry) -> None:
    await registry.admit_run(run("r1"), reject_if_busy=False, events=events("r1", "t1", 1, 2))
    await registry.admit_run(run("r2"), reject_if_busy=False, events=events("r2", "t1", 1))
    assert await registry.delete_run("r1") is True
    assert await registry.get_run("r1") is None and await registry.list_events("r1") == []
    assert await registry.last_seq("r2") == 1
    assert await registry.delete_run("r1") is False


# --- events -------------------------------------------------------------------


async def test_events_in_order_with_after_seq_and_limit(registry: Registry) -> None:
    await registry.admit_run(run("r1", thread_id="t9"), reject_if_busy=False)
    assert await registry.last_seq("r1") == 0
    await registry.store_events(events("r1", "t9", 3, 1, 2))
    await registry.store_events(events("r1", "t9", 4, 5, type="values"))
    await registry.store_events([])

    stored = await registry.list_events("r1")
    assert [e.seq for e in stored] == [1, 2, 3, 4, 5]
    first = stored[0]
    assert (first.run_id, first.thread_id, first.type) == ("r1", "t9", "token")
    assert first.payload == {"n": 1, "text": "tok1"} and first.at == at(1)
    assert [e.type for e in stored[3:]] == ["values", "values"]
    assert [e.seq for e in await registry.list_events("r1", after_seq=2)] == [3, 4, 5]
    assert [e.seq for e in await registry.list_events("r1", after_seq=1, limit=2)] == [2, 3]
    assert await registry.list_events("r1", after_seq=5) == []
    assert await registry.last_seq("r1") == 5


async def test_duplicate_seq_raises_and_stores_nothing_of_the_batch(registry: Registry) -> None:
    await registry.admit_run(run("r1"), reject_if_busy=False, events=events("r1", "t1", 1, 2))
    with pytest.raises(ConflictError):
        await registry.store_events(events("r1", "t1", 3, 4, 2))
    with pytest.raises(ConflictError):
        await registry.store_events(events("r1", "t1", 5, 5))
    assert [e.seq for e in await registry.list_events("r1")] == [1, 2]
    # The registry is still usable after the failed transaction.
    await registry.store_events(events("r1", "t1", 3))
    assert await registry.last_seq("r1") == 3
    # A copy skips what is stored already.
    await registry.put_events(events("r1", "t1", 3, 4))
    assert [e.seq for e in await registry.list_events("r1")] == [1, 2, 3, 4]


async def test_events_of_a_missing_run_are_dropped(registry: Registry) -> None:
    await registry.store_events(events("nope", "t1", 1))
    await registry.put_events(events("nope", "t1", 2))
    assert await registry.list_events("nope") == [] and await registry.last_seq("nope") == 0


async def test_naive_datetimes_are_refused(registry: Registry) -> None:
    with pytest.raises(BadInputError):
        await registry.admit_run(run("r1", created_at=datetime(2025, 1, 1)), reject_if_busy=False)
    with pytest.raises(BadInputError):
        await registry.put_thread(thread("t1", datetime(2025, 1, 1)))
    with pytest.raises(BadInputError):
        await registry.list_threads(ThreadFilter(updated_after=datetime(2025, 1, 1)), first=1)


async def test_admit_run_keeps_the_owner_and_guards_it(registry: Registry) -> None:
    first, _ = await registry.admit_run(run("r1", "t", user_id="ann"), reject_if_busy=False)
    assert first is not None
    # A later run by someone else (an administrator) never changes the owner.
    await registry.admit_run(run("r2", "t", user_id="root"), reject_if_busy=False)
    thread = await registry.get_thread("t")
    assert thread is not None and thread.user_id == "ann"
    # With `owner`, another user's thread is not found, and nothing is written.
    with pytest.raises(NotFoundError):
        await registry.admit_run(run("r3", "t", user_id="bob"), reject_if_busy=False, owner="bob")
    assert await registry.get_run("r3") is None
    admitted, _ = await registry.admit_run(
        run("r4", "t", user_id="ann"), reject_if_busy=False, owner="ann"
    )
    assert admitted is not None
    new, _ = await registry.admit_run(
        run("r5", "new", user_id="bob"), reject_if_busy=False, owner="bob"
    )
    assert new is not None and (await registry.get_thread("new")).user_id == "bob"  # type: ignore[union-attr]
    # Runs filtered by their thread's owner: bob's thread only.
    page = await registry.list_runs(RunFilter(owner="bob"), first=10)
    assert [r.run_id for r in page.items] == ["r5"]
    page = await registry.list_runs(RunFilter(owner="ann"), first=10)
    assert {r.run_id for r in page.items} == {"r1", "r2", "r4"}


# --- deletes are final ----------------------------------------------------------


async def test_a_run_ending_after_its_threads_deletion_writes_nothing(registry: Registry) -> None:
    admitted, _ = await registry.admit_run(run("r1", "t"), reject_if_busy=True)
    assert admitted is not None
    await registry.admit_run(run("r2", "other"), reject_if_busy=True)

    assert await registry.delete_thread("t") == (True, 1)

    # What the run still does as it ends: its events, its end, its checkpoint's touch.
    await registry.store_events([*events("r1", "t", 2, 3), *events("r2", "other", 2)])
    await registry.put_events(events("r1", "t", 4))
    assert await registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS) == (
        None,
        False,
    )
    assert await registry.update_run("r1", status=RunStatus.RUNNING) is None
    await registry.touch_threads({"t": "ann"}, create=False)

    assert await registry.get_thread("t") is None
    assert await registry.get_run("r1") is None
    assert await registry.list_events("r1") == []
    # The other run's event of the same batch was stored.
    assert [e.seq for e in await registry.list_events("r2")] == [2]
    # A plain touch (a graph.ainvoke on the manager's saver) creates the row afresh.
    await registry.touch_threads({"t": "ann"})
    created = await registry.get_thread("t")
    assert created is not None and created.user_id == "ann"


async def test_the_thread_row_cascades_to_runs_and_events(registry: Registry) -> None:
    await registry.admit_run(run("r1", "t"), reject_if_busy=True, events=events("r1", "t", 1))
    with pytest.raises(NotFoundError):
        await registry.put_run(run("r9", "missing"))
    assert await registry.get_run("r9") is None
    assert await registry.delete_thread("t") == (True, 1)
    assert await registry.list_events("r1") == []


async def test_finish_run_waits_for_an_admission_holding_the_thread(pg_database: str) -> None:
    """A run finishing while an ENQUEUE is admitted on its thread: whichever holds the
    thread row first, the queued run is seen (the thread stays BUSY, `waiting` is True)
    or admitted after the end (then claimable at once); never BUSY overwritten by IDLE."""
    pool = make_pool(pg_database)
    await pool.open()
    try:
        registry = PostgresRegistry(pool)
        await registry.setup()
        await registry.admit_run(run("r1", "t", created_at=at(1)), reject_if_busy=True)
        await registry.update_run("r1", status=RunStatus.RUNNING)
        async with pool.connection() as holder, pool.connection() as probe:
            await holder.set_autocommit(False)
            await holder.execute("SELECT 1 FROM code_hero_threads WHERE thread_id = 't' FOR UPDATE")

            async def until_waiting_on_locks(n: int) -> None:
                for _ in range(3000):  # a bound, not a timing: each look is a round trip
                    cur = await probe.execute(
                        "SELECT count(*) AS n FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                    row = await cur.fetchone()
                    if row is not None and int(row["n"]) >= n:
                        return
                    await asyncio.sleep(0.01)
                raise AssertionError(f"{n} sessions never waited on the thread row")

            # The ENQUEUE queues on the thread row first, then the run's end.
            admit = asyncio.create_task(
                registry.admit_run(run("r2", "t", created_at=at(2)), reject_if_busy=False)
            )
            await until_waiting_on_locks(1)
            finish = asyncio.create_task(
                registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
            )
            await until_waiting_on_locks(2)
            await holder.rollback()
            admitted, busy = await admit
            finished, waiting = await finish
        assert admitted is not None and busy == "r1"
        assert finished is not None and finished.status is RunStatus.SUCCESS
        assert waiting  # the executor sends the wake-up for r2
        thread = await registry.get_thread("t")
        assert thread is not None and thread.status is ThreadStatus.BUSY
    finally:
        await pool.close()


class _SqliteRegistryV10(SqliteRegistry):
    """The registry as the previous release had it (migrations up to v10)."""

    migrations = SQLITE_MIGRATIONS[:11]


class _PgRegistryV10(PostgresRegistry):
    migrations = POSTGRES_MIGRATIONS[:11]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_migration_to_foreign_keys_removes_orphans(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A database of the previous schema version with rows left without their thread
    or run: the migration removes those, keeps the rest, and the keys hold after."""

    async def fill(old: Registry) -> None:
        await old.setup()
        await old.admit_run(
            run("r-kept", "kept"), reject_if_busy=True, events=events("r-kept", "kept", 1, 2)
        )
        await old.put_run(run("r-orphan", "deleted-thread"))  # no thread row
        await old.store_events(events("r-orphan", "deleted-thread", 1))
        await old.store_events(events("r-gone", "kept", 1))  # no run row

    async def check(new: Registry) -> None:
        await new.setup()
        assert await new.get_run("r-kept") is not None
        assert [e.seq for e in await new.list_events("r-kept")] == [1, 2]
        assert await new.get_run("r-orphan") is None
        assert await new.list_events("r-orphan") == [] and await new.list_events("r-gone") == []
        # After the migration, the keys hold: the run index still serves paging.
        page = await new.list_runs(RunFilter(thread_id="kept"), first=10)
        assert [r.run_id for r in page.items] == ["r-kept"]
        with pytest.raises(NotFoundError):
            await new.put_run(run("r-new", "deleted-thread"))
        await new.store_events(events("r-gone", "kept", 2))
        assert await new.list_events("r-gone") == []
        assert await new.delete_thread("kept") == (True, 1)
        assert await new.list_events("r-kept") == []

    if kind == "postgres":
        pool = make_pool(request.getfixturevalue("pg_database"))
        await pool.open()
        try:
            await fill(_PgRegistryV10(pool))
            await check(PostgresRegistry(pool))
        finally:
            await pool.close()
        return
    path = str(tmp_path / "old.sqlite")
    async with aiosqlite.connect(path) as conn:
        await fill(_SqliteRegistryV10(conn, asyncio.Lock()))
    async with aiosqlite.connect(path) as conn:
        await conn.execute("PRAGMA foreign_keys = ON")
        await check(SqliteRegistry(conn, asyncio.Lock()))
