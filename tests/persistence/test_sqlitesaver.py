"""OneTripSqliteSaver stores what the stock AsyncSqliteSaver stores, one trip per call."""

from __future__ import annotations

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
        trips: list[Any] = []
        real = conn._execute

        async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
            trips.append(fn)
            return await real(fn, *args, **kwargs)

        monkeypatch.setattr(conn, "_execute", counted)
        last = await fill(ours, "t")  # 3 checkpoints, 3 sets of writes
        assert len(trips) == 6
        await ours.aget_tuple(last)
        assert len(trips) == 7
        assert not conn.in_transaction  # every write committed in its trip
