"""OneTripSqliteSaver stores what the stock AsyncSqliteSaver stores, one trip per call."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from code_hero.persistence.sqlitesaver import OneTripSqliteSaver


async def fill(saver: AsyncSqliteSaver, thread_id: str) -> RunnableConfig:
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    for step in range(3):
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"steps": ["a"] * step, "text": f"s{step}"}
        checkpoint["channel_versions"] = {"steps": step + 1, "text": step + 1}
        config = await saver.aput(
            config, checkpoint, {"step": step}, {"steps": step + 1, "text": step + 1}
        )
        await saver.aput_writes(config, [("steps", ["w"]), ("text", f"x{step}")], f"task-{step}")
    return config


def comparable(tuples: list[Any]) -> list[Any]:
    """The tuples without the checkpoint ids and timestamps two fills cannot share."""
    return [
        (
            t.checkpoint["channel_values"],
            t.checkpoint["channel_versions"],
            t.metadata["step"],
            t.parent_config is None,
            [(task[:5], channel, value) for task, channel, value in t.pending_writes or []],
        )
        for t in tuples
    ]


async def test_same_rows_as_the_stock_saver(tmp_path: Path) -> None:
    async with aiosqlite.connect(str(tmp_path / "cp.sqlite")) as conn:
        stock, ours = AsyncSqliteSaver(conn), OneTripSqliteSaver(conn)
        await fill(stock, "stock")
        last = await fill(ours, "ours")
        for reader in (stock, ours):  # each reads what the other wrote, the same way
            mine = [t async for t in reader.alist({"configurable": {"thread_id": "ours"}})]
            theirs = [t async for t in reader.alist({"configurable": {"thread_id": "stock"}})]
            assert comparable(mine) == comparable(theirs)
            assert len(mine) == 3
            assert [len(t.pending_writes or []) for t in mine] == [2, 2, 2]
        assert await ours.aget_tuple(last) == await stock.aget_tuple(last)
        latest = {"configurable": {"thread_id": "ours", "checkpoint_ns": ""}}
        assert await ours.aget_tuple(latest) == await stock.aget_tuple(latest)
        assert await ours.aget_tuple({"configurable": {"thread_id": "none"}}) is None


async def test_one_trip_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with aiosqlite.connect(str(tmp_path / "cp.sqlite")) as conn:
        ours = OneTripSqliteSaver(conn)
        await fill(ours, "warm")  # set-up done
        trips = counting_trips(conn, monkeypatch)
        last = await fill(ours, "t")  # 3 checkpoints, 3 sets of writes
        assert len(trips) == 6
        await ours.aget_tuple(last)
        assert len(trips) == 7
        assert not conn.in_transaction  # every write committed in its trip


def counting_trips(conn: aiosqlite.Connection, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every call sent to aiosqlite's thread from now on."""
    trips: list[Any] = []
    real = conn._execute

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(fn)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(conn, "_execute", counted)
    return trips


def a_checkpoint(text: str) -> Any:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"text": text}
    checkpoint["channel_versions"] = {"text": 1}
    return checkpoint


def root(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


async def test_concurrent_threads_share_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve threads writing at once: fewer trips (and commits) than writes, and every
    thread reads back what the stock saver's own writes would have left."""
    async with aiosqlite.connect(str(tmp_path / "cp.sqlite")) as conn:
        stock, ours = AsyncSqliteSaver(conn), OneTripSqliteSaver(conn)
        await fill(stock, "stock")
        await fill(ours, "warm")  # set-up done
        trips = counting_trips(conn, monkeypatch)
        await asyncio.gather(*(fill(ours, f"t{i}") for i in range(12)))
        assert len(trips) < 12 * 6 / 2  # a write alone would make one trip each
        assert ours.committed == 13 * 6  # "warm" first
        assert not conn.in_transaction
        expected = [t async for t in stock.alist({"configurable": {"thread_id": "stock"}})]
        for i in range(12):
            got = [t async for t in stock.alist({"configurable": {"thread_id": f"t{i}"}})]
            assert comparable(got) == comparable(expected)


async def test_a_threads_writes_commit_in_their_order(tmp_path: Path) -> None:
    async with aiosqlite.connect(str(tmp_path / "cp.sqlite")) as conn:
        ours = OneTripSqliteSaver(conn)
        await fill(ours, "warm")
        await conn.executescript(
            "CREATE TABLE put_order (seq INTEGER PRIMARY KEY, checkpoint_id TEXT);"
            "CREATE TRIGGER log_put AFTER INSERT ON checkpoints BEGIN "
            "INSERT INTO put_order (checkpoint_id) VALUES (NEW.checkpoint_id); END;"
        )
        checkpoints = [a_checkpoint(f"c{n}") for n in range(20)]
        # Not awaited one by one: all are in flight or queued together.
        await asyncio.gather(
            *(ours.aput(root("t"), c, {"step": n}, {"text": 1}) for n, c in enumerate(checkpoints))
        )
        async with conn.execute("SELECT checkpoint_id FROM put_order ORDER BY seq") as cur:
            order = [row[0] for row in await cur.fetchall()]
        assert order == [c["id"] for c in checkpoints]
        assert ours.transactions < ours.committed


async def test_a_bad_write_fails_its_caller_only(tmp_path: Path) -> None:
    async with aiosqlite.connect(str(tmp_path / "cp.sqlite")) as conn:
        ours = OneTripSqliteSaver(conn)
        await fill(ours, "warm")
        config = await ours.aput(root("t"), a_checkpoint("base"), {"step": 0}, {"text": 1})
        writes = [ours.aput_writes(config, [("text", f"w{n}")], f"task-{n}") for n in range(4)] + [
            ours.aput_writes(config, [("text", object())], "bad")
        ]
        async with ours.lock:  # all queue together behind the lock
            tasks = [asyncio.ensure_future(w) for w in writes]
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert outcomes[:4] == [None] * 4
        assert isinstance(outcomes[4], TypeError)
        stored = await ours.aget_tuple(config)
        assert stored is not None
        assert sorted(v for _, _, v in stored.pending_writes or []) == ["w0", "w1", "w2", "w3"]
        assert not conn.in_transaction


async def test_a_caller_cancelled_before_its_group_leaves_nothing(tmp_path: Path) -> None:
    async with aiosqlite.connect(str(tmp_path / "cp.sqlite")) as conn:
        ours = OneTripSqliteSaver(conn)
        await fill(ours, "warm")
        kept, dropped = a_checkpoint("kept"), a_checkpoint("dropped")
        async with ours.lock:
            first = asyncio.ensure_future(ours.aput(root("a"), kept, {"step": 0}, {"text": 1}))
            second = asyncio.ensure_future(ours.aput(root("b"), kept, {"step": 0}, {"text": 1}))
            gone = asyncio.ensure_future(ours.aput(root("c"), dropped, {"step": 0}, {"text": 1}))
            await asyncio.sleep(0)
            gone.cancel()
        await asyncio.gather(first, second)
        with pytest.raises(asyncio.CancelledError):
            await gone
        for thread_id, present in (("a", True), ("b", True), ("c", False)):
            assert (await ours.aget_tuple(root(thread_id)) is not None) is present


async def test_writes_queued_when_the_connection_closes_fail_not_cancel(tmp_path: Path) -> None:
    # A group's trip that raises (the connection closed under it) used to cancel every
    # write still queued: their runs, never cancelled, ended as if they were (review).
    conn = await aiosqlite.connect(str(tmp_path / "cp.sqlite"))
    ours = OneTripSqliteSaver(conn)
    await fill(ours, "warm")
    gate = threading.Event()
    blocker = asyncio.ensure_future(conn._execute(gate.wait))
    writes = [
        asyncio.create_task(ours.aput(root(f"t{i}"), a_checkpoint("x"), {"step": 0}, {"text": 1}))
        for i in range(70)
    ]
    for _ in range(10):
        await asyncio.sleep(0)
    closing = asyncio.ensure_future(conn.close())
    for _ in range(10):
        await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    await closing
    await blocker
    assert not any(isinstance(o, asyncio.CancelledError) for o in outcomes)
    assert any(isinstance(o, Exception) for o in outcomes)
