"""A deletion's statements are planned once per connection, not at every run (PostgreSQL).

A statement is planned afresh at each of its first five runs on a connection
(`plan_cache_mode = auto`), and the pool hands its connections out: nearly every
deletion paid for a plan about as long as its execution (issue 15). The one-step
deletion's function (`code_hero_purge_thread`) plans its statements generically from
its first call, for its own statements only.
"""

from __future__ import annotations

from typing import Any

import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.registry import PostgresRegistry
from tests.persistence.registry.support import PG_KWARGS, at, put

pytestmark = pytest.mark.postgres


async def test_a_deletion_is_planned_once_per_connection(pg_database: str) -> None:
    # One connection: every deletion, and the look at its settings, run on it.
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        pg_database, kwargs=PG_KWARGS, min_size=1, max_size=1, open=False
    )
    await pool.open()
    try:
        registry = PostgresRegistry(pool)
        await registry.setup()
        async with pool.connection() as conn:
            for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):  # the saver's
                await conn.execute(f"CREATE TABLE {table} (thread_id TEXT NOT NULL)")
        for i in range(3):
            await put(registry, f"t{i}", at(i))
            gone = await registry.purge_idle_thread(f"t{i}", at(100), None)
            assert gone.existed
            assert await registry.get_thread(f"t{i}") is None
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT proconfig FROM pg_proc WHERE proname = 'code_hero_purge_thread'"
            )
            config = await cur.fetchall()
            await cur.execute("SHOW plan_cache_mode")
            mode = await cur.fetchone()
    finally:
        await pool.close()
    assert config == [{"proconfig": ["plan_cache_mode=force_generic_plan"]}]
    # Only the function's statements: the session's own setting is as it was.
    assert mode == {"plan_cache_mode": "auto"}
