"""Batched replay into PostgreSQL: the rows `aput`/`aput_writes` would write, and a
poison entry in a batch is quarantined alone."""

from __future__ import annotations

import operator
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

import psycopg
import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres.base import BasePostgresSaver
from langgraph.graph import END, START, StateGraph
from psycopg.adapt import PyFormat, Transformer
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from code_hero.config import create_memory_checkpointer, create_postgres_checkpointer
from code_hero.persistence.backends import Backend, MemoryBackend, PostgresBackend
from code_hero.persistence.bulk import (
    Statement,
    dumped_jsonb,
    statements,
    write_statement,
    write_statements,
)
from code_hero.persistence.fallback import full_versions
from code_hero.persistence.journal import Journal, PutCheckpoint, PutWrites
from code_hero.persistence.outagefile import OutageFile
from code_hero.persistence.pg_backend import _json_adapters
from code_hero.persistence.pgarrays import pg_array
from code_hero.persistence.unreachable import is_backend_error
from tests.conftest import PG_ADMIN_URL, _pg_url
from tests.faults import BlackHoleProxy, cancelled_at_every_step, with_port
from tests.persistence.proxied import PG_PORT
from tests.pgtrips import count_pg_statements, count_pg_trips

pytestmark = pytest.mark.postgres

TABLES = {
    "checkpoints": "thread_id, checkpoint_ns, checkpoint_id",
    "checkpoint_blobs": "thread_id, checkpoint_ns, channel, version",
    "checkpoint_writes": "thread_id, checkpoint_ns, checkpoint_id, task_id, idx",
}


class State(TypedDict, total=False):
    steps: Annotated[list[str], operator.add]
    notes: list[str]  # written once: later checkpoints keep its version
    text: str


class Recorder(InMemorySaver):
    """Journals what a graph writes, as the fallback router does during an outage."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[PutCheckpoint | PutWrites] = []

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        self.entries.append(PutCheckpoint(config, checkpoint, metadata, full_versions(checkpoint)))
        return await super().aput(config, checkpoint, metadata, full_versions(checkpoint))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self.entries.append(PutWrites(config, tuple(writes), task_id, task_path))
        await super().aput_writes(config, writes, task_id, task_path)


def graph(saver: Recorder) -> Any:
    builder = StateGraph(State)

    async def first(state: State) -> dict[str, Any]:
        return {"steps": ["first"], "notes": ["kept"], "text": "first"}

    async def later(state: State) -> dict[str, Any]:
        return {"steps": ["later"], "text": "later"}

    builder.add_node("first", first)
    builder.add_node("second", later)
    builder.add_node("third", later)
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    builder.add_edge("second", "third")
    builder.add_edge("third", END)
    return builder.compile(checkpointer=saver)


async def journalled(thread_id: str) -> list[PutCheckpoint | PutWrites]:
    recorder = Recorder()
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    await graph(recorder).ainvoke({"steps": []}, config)
    return recorder.entries


@pytest.fixture
def second_pg_database() -> Iterator[str]:
    name = f"ch_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url(name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def opened(url: str) -> PostgresBackend:
    backend = PostgresBackend(create_postgres_checkpointer(url))
    await backend.open()
    return backend


@pytest.fixture
async def fallback() -> AsyncIterator[Backend]:
    async with MemoryBackend(create_memory_checkpointer()) as backend:
        yield backend


def table(url: str, name: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(f"SELECT * FROM {name} ORDER BY {TABLES[name]}").fetchall())


async def test_a_batch_writes_the_rows_the_stock_calls_write(
    pg_database: str, second_pg_database: str
) -> None:
    entries = await journalled("t1") + await journalled("t2")
    assert {type(e) for e in entries} == {PutCheckpoint, PutWrites}
    one_by_one, batched = await opened(pg_database), await opened(second_pg_database)
    try:
        for entry in entries:
            await entry.replay(one_by_one, one_by_one)
        for thread in ("t1", "t2"):
            await batched.put_batch([e for e in entries if e.thread_id == thread])
        for name in TABLES:
            expected = table(pg_database, name)
            assert expected and table(second_pg_database, name) == expected, name
        for thread in ("t1", "t2"):
            config: RunnableConfig = {"configurable": {"thread_id": thread}}
            assert await batched.saver.aget_tuple(config) == await one_by_one.saver.aget_tuple(
                config
            )
            want = [t async for t in one_by_one.saver.alist(config)]
            assert [t async for t in batched.saver.alist(config)] == want and len(want) == 5
    finally:
        await one_by_one.close()
        await batched.close()


async def test_a_batch_dumps_a_channel_version_once_but_each_entry_stays_whole() -> None:
    entries = await journalled("t1")
    saver = BasePostgresSaver()  # the SQL and the serde, no connection

    def blobs(items: Sequence[PutCheckpoint | PutWrites]) -> list[tuple[str, str]]:
        return [
            (row[2], row[3])
            for sql, rows in statements(saver, items)
            if sql == saver.UPSERT_CHECKPOINT_BLOBS_SQL
            for row in rows
        ]

    together = blobs(entries)
    assert len(together) == len(set(together))  # "notes" went once
    alone = [b for e in entries for b in blobs([e])]
    assert len(alone) > len(together) and set(alone) == set(together)


@pytest.mark.parametrize(
    "value",
    [
        {"text": "é 漢字 😀", "pair": "\ud83d\ude00", "lone": "\ud800", "nul": "a\0"},
        {"n": [2**70, 0.1, 1e300, -0.0, True, None], "s": 'tab\t quote" \\ \x7f'},
        {"nan": float("nan"), "inf": float("inf")},  # json.dumps's NaN, refused by PostgreSQL
    ],
)
def test_a_dumped_jsonb_sends_the_bytes_psycopg_sends_for_the_value(value: Any) -> None:
    """The checkpoint's jsonb, dumped when its write is serialised, goes out as the bytes
    psycopg's own dumper makes of `Jsonb(value)` at the write (the stock saver's) on the
    pool's connections (`_json_adapters`: 1e300 written so jsonb keeps it a float), in
    binary, in text and as `%s` picks, alone and as a jsonb[]'s element."""
    pool = _json_adapters()
    for format in PyFormat:
        sent, stock = Transformer(pool), Transformer(pool)
        got = sent.dump_sequence([dumped_jsonb(value)], [format])
        assert [bytes(v) for v in got if v is not None] == stock.dump_sequence(
            [Jsonb(value)], [format]
        )
        assert (sent.types, sent.formats) == (stock.types, stock.formats)
    arrays = [
        pg_array("jsonb", [Jsonb(value), None, v]) for v in (Jsonb(value), dumped_jsonb(value))
    ]
    assert type(arrays[0]) is type(arrays[1])
    stock_array, dumped_array = (
        Transformer(pool).dump_sequence([a], [PyFormat.BINARY]) for a in arrays
    )
    assert dumped_array == stock_array


async def test_a_poison_entry_in_a_batch_is_quarantined_and_the_rest_go_in(
    pg_database: str, fallback: Backend
) -> None:
    entries = await journalled("t1")
    checkpoints = [i for i, e in enumerate(entries) if isinstance(e, PutCheckpoint)]
    bad = entries[checkpoints[2]]
    assert isinstance(bad, PutCheckpoint)
    # jsonb cannot hold \u0000: PostgreSQL refuses the checkpoint (not unreachable).
    poison = PutCheckpoint(
        bad.config,
        {**bad.checkpoint, "channel_values": {**bad.checkpoint["channel_values"], "text": "a\0"}},
        bad.metadata,
        bad.versions,
    )
    entries[checkpoints[2]] = poison
    journal = Journal(1000)
    for entry in entries:
        journal.append(entry)
    primary = await opened(pg_database)
    synced: list[int] = []
    try:
        await journal.drain(
            primary=primary,
            fallback=fallback,
            concurrency=4,
            is_unreachable=lambda exc: isinstance(exc, psycopg.OperationalError),
            on_synced=lambda: synced.append(1),
        )
        assert len(journal) == 0 and len(synced) == len(entries) - 1
        assert [q.entry for q in journal.quarantine] == [poison]
        ids = [r[2] for r in table(pg_database, "checkpoints")]
        want = sorted(e.checkpoint["id"] for e in entries if isinstance(e, PutCheckpoint))
        assert ids == [i for i in want if i != poison.checkpoint["id"]]
        writes = {r[2] for r in table(pg_database, "checkpoint_writes")}
        assert writes == {
            e.config["configurable"]["checkpoint_id"] for e in entries if isinstance(e, PutWrites)
        }
    finally:
        await primary.close()


@pytest.mark.postgres
async def test_a_write_cancelled_mid_pipeline_leaves_no_broken_connection_in_the_pool(
    pg_database: str,
) -> None:
    """Found by tests/persistence/test_chaos.py (startRun and updateState INTERNAL with an
    IndexError, a prune counting -1): a run cancelled while its checkpoints were written
    gave its connection back in pipeline mode, and the next borrower's statement read
    nothing. Cancelled at every step of its course, a write leaves the pool sound."""
    planned: list[Statement] = [("SELECT %s::int, pg_sleep(0.0002)", [(n,) for n in range(5)])] * 20
    async with AsyncConnectionPool(pg_database, min_size=1, max_size=1, open=False) as pool:
        broken = await cancelled_at_every_step(pool, lambda _: write_statements(pool, planned), 40)
    assert broken == []


@pytest.mark.postgres
async def test_one_statement_cancelled_in_flight_leaves_no_broken_connection_in_the_pool(
    pg_database: str,
) -> None:
    """A group commit's one statement, cancelled at every step of its course, leaves the
    pool sound (the connection is closed and replaced, as a pipeline's is)."""
    sql = "SELECT %s::int, pg_sleep(0.0002)"
    async with AsyncConnectionPool(
        pg_database, min_size=1, max_size=1, open=False, kwargs={"autocommit": True}
    ) as pool:
        broken = await cancelled_at_every_step(pool, lambda n: write_statement(pool, sql, [n]), 40)
    assert broken == []


@pytest.mark.postgres
async def test_a_batch_is_one_round_trip_and_all_or_nothing(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BEGIN, the statements and COMMIT go in one trip (were four: psycopg's transaction
    in a pipeline syncs at its start and end); a failed statement leaves nothing."""
    async with AsyncConnectionPool(
        pg_database, min_size=1, max_size=1, open=False, kwargs={"autocommit": True}
    ) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE t (a int PRIMARY KEY)")
        insert = "INSERT INTO t (a) VALUES (%s)"
        trips = count_pg_trips(monkeypatch)
        await write_statements(pool, [(insert, [(1,)]), (insert, [(2,), (3,)])])
        assert len(trips) == 1
        with pytest.raises(psycopg.errors.UniqueViolation):
            await write_statements(pool, [(insert, [(4,)]), (insert, [(5,), (1,)])])
        async with pool.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            rows = await (await conn.execute("SELECT a FROM t ORDER BY a")).fetchall()
    assert rows == [(1,), (2,), (3,)]


@pytest.mark.postgres
async def test_a_threads_replayed_batch_is_one_statement(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread's checkpoints and writes replayed together go as one statement, as group
    commit's do (were BEGIN, a statement per checkpoint, per blob set and per task's
    writes, and COMMIT: CPU per statement bounded the copy-back's rate, issue 15); the
    rows are the stock calls' (`test_a_batch_writes_the_rows_the_stock_calls_write`)."""
    entries = await journalled("t1")
    primary = await opened(pg_database)
    try:
        sent = count_pg_statements(monkeypatch)
        await primary.put_batch(entries)
        written = [s for s in sent if "checkpoint" in s]  # not the pool's checkout
        assert len(written) == 1 and written[0].startswith("WITH")
        config: RunnableConfig = {"configurable": {"thread_id": "t1"}}
        assert len([t async for t in primary.saver.alist(config)]) == 5
    finally:
        await primary.close()


class CutAfterOneBatch(PostgresBackend):
    """A primary whose proxy refuses every connection once one batch committed: the
    outage comes back in the middle of a copy-back step."""

    proxy: BlackHoleProxy
    cut = False

    async def put_batch(self, items: Sequence[PutCheckpoint | PutWrites]) -> None:
        await super().put_batch(items)
        if not self.cut:
            self.cut = True
            self.proxy.refuse()


@pytest.mark.postgres
async def test_a_step_cut_midway_removes_from_the_journal_and_its_file_only_what_committed(
    pg_database: str, fallback: Backend, tmp_path: Path
) -> None:
    """The primary lost after one thread's batch committed, the others' failing: what
    left the journal and its file is in the primary; everything else is in both, in
    order, and a second drain brings it in."""
    entries = [e for t in ("t1", "t2", "t3") for e in await journalled(t)]
    journal = Journal(1000)
    store = OutageFile.claim(str(tmp_path / "fallback.sqlite"), pg_database)
    journal.attach(store, {})
    for entry in entries:
        journal.append(entry)
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        config = create_postgres_checkpointer(with_port(pg_database, proxy.port), pool_timeout=1)
        primary = CutAfterOneBatch(config)
        primary.proxy = proxy
        await primary.open()
        try:
            with pytest.raises(Exception) as raised:
                await journal.drain(
                    primary=primary,
                    fallback=fallback,
                    concurrency=1,
                    is_unreachable=is_backend_error,
                    on_synced=lambda: None,
                )
            assert is_backend_error(raised.value)

            def checkpoint_ids(items: Sequence[object]) -> list[str]:
                return [e.checkpoint["id"] for e in items if isinstance(e, PutCheckpoint)]

            committed = {r[2] for r in table(pg_database, "checkpoints")}
            assert committed == set(checkpoint_ids([e for e in entries if e.thread_id == "t1"]))
            waiting = list(journal.entries)
            assert [e.thread_id for e in waiting] == ["t2"] * (len(entries) // 3) + ["t3"] * (
                len(entries) // 3
            )
            stored = store.load().entries
            assert len(stored) == len(waiting)
            removed = [e for e in entries if all(e is not w for w in waiting)]
            assert set(checkpoint_ids(removed)) <= committed
            proxy.forward()
            await primary.reconnect()
            await journal.drain(
                primary=primary,
                fallback=fallback,
                concurrency=1,
                is_unreachable=is_backend_error,
                on_synced=lambda: None,
            )
            assert not journal.entries and not store.load().entries
            assert {r[2] for r in table(pg_database, "checkpoints")} == set(checkpoint_ids(entries))
        finally:
            await primary.close()
            store.close()
