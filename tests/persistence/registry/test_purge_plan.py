"""A deletion's check for unfinished runs reads the thread's runs (PostgreSQL).

Once `code_hero_runs` is analysed with every run finished, the planner takes
the partial index of unfinished runs for nearly empty and, for a condition
`status IN ('PENDING', 'RUNNING')`, scans all of it; but that index keeps an
entry for every run that was ever unfinished until a vacuum, and while another
transaction holds those row versions visible each deletion visited all of them
(issue 15). The check of `purge_idle_thread`'s function (migrations.PURGE_BUSY) is
explained here as the function runs it: generically planned, its thread a parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from code_hero.persistence.migrations import PURGE_BUSY
from code_hero.persistence.records import RunStatus, ThreadStatus
from code_hero.persistence.registry import PostgresRegistry
from tests.persistence.registry.support import at, make_pool

pytestmark = pytest.mark.postgres

RUNS = 2000


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


async def test_the_busy_check_does_not_scan_every_unfinished_run(pg_database: str) -> None:
    pool = make_pool(pg_database)
    await pool.open()
    try:
        registry = PostgresRegistry(pool)
        await registry.setup()
        async with pool.connection() as conn, conn.cursor() as cur:
            for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):  # the saver's
                await cur.execute(f"CREATE TABLE {table} (thread_id TEXT NOT NULL)")
            await cur.executemany(
                "INSERT INTO code_hero_threads (thread_id, user_id, status, metadata, "
                "created_at, updated_at) VALUES (%s, NULL, %s, %s, %s, %s)",
                [
                    (f"t{i:05d}", ThreadStatus.IDLE.value, Jsonb({}), at(i), at(i))
                    for i in range(RUNS)
                ],
            )
            await cur.executemany(
                "INSERT INTO code_hero_runs (run_id, thread_id, graph, status, metadata, "
                "created_at) VALUES (%s, %s, 'g', %s, %s, %s)",
                [
                    (f"r{i:05d}", f"t{i:05d}", RunStatus.SUCCESS.value, Jsonb({}), at(i))
                    for i in range(RUNS)
                ],
            )
            await cur.execute("ANALYZE")
            busy = PURGE_BUSY.replace("p_thread", "$1")
            await cur.execute(f"PREPARE busy (text) AS SELECT {busy}")
            await cur.execute("SET plan_cache_mode = force_generic_plan")  # the function's
            await cur.execute("EXPLAIN (FORMAT JSON) EXECUTE busy('t00007')")
            row = await cur.fetchone()
    finally:
        await pool.close()
    assert row is not None
    plan = row["QUERY PLAN"][0]["Plan"]
    indexes = {n.get("Index Name") for n in _nodes(plan)}
    assert "code_hero_runs_unfinished_idx" not in indexes, plan
    assert "code_hero_runs_thread_idx" in indexes, plan
