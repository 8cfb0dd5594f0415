"""LoopReadingPostgresSaver reads exactly what the stock AsyncPostgresSaver reads."""

from __future__ import annotations

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.pgsaver import INLINE_WRITES_BYTES, LoopReadingPostgresSaver

pytestmark = pytest.mark.postgres


async def test_same_tuples_as_the_stock_saver(pg_database: str) -> None:
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(pg_database, kwargs=kwargs, open=False) as pool:
        stock = AsyncPostgresSaver(pool)
        await stock.setup()
        ours = LoopReadingPostgresSaver(pool)
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        for step in range(3):
            checkpoint = empty_checkpoint()
            checkpoint["channel_values"] = {"steps": ["a"] * step, "text": f"s{step}"}
            checkpoint["channel_versions"] = {"steps": step + 1, "text": step + 1}
            config = await stock.aput(
                config, checkpoint, {"step": step}, {"steps": step + 1, "text": step + 1}
            )
            if step == 1:  # small writes: decoded on the loop
                await stock.aput_writes(config, [("steps", ["w"]), ("text", "x")], "task-1")
            if step == 2:  # writes past INLINE_WRITES_BYTES: the stock saver's thread
                big = "x" * (INLINE_WRITES_BYTES + 1)
                await stock.aput_writes(config, [("text", big)], "task-2")
        listed = [t async for t in ours.alist({"configurable": {"thread_id": "t"}})]
        expected = [t async for t in stock.alist({"configurable": {"thread_id": "t"}})]
        assert listed == expected
        assert [len(t.pending_writes or []) for t in listed] == [1, 2, 0]
        assert listed[0].checkpoint["channel_values"] == {"steps": ["a", "a"], "text": "s2"}
        assert await ours.aget_tuple(config) == await stock.aget_tuple(config)
