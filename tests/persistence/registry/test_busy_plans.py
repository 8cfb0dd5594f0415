"""Every look for one thread's unfinished runs reads the thread's runs (PostgreSQL).

As `test_purge_plan.py` for a deletion's busy check (issue 15): once `code_hero_runs`
is analysed with every run finished, the planner takes the partial index of
unfinished runs for nearly empty and answers `thread_id = ? AND status IN
('PENDING', 'RUNNING')` from it, visiting every entry it holds, the dead ones of
every thread's earlier runs too while another transaction keeps them visible. Here
the real calls run, and auto_explain hands their plans back as notices.

Left alone: the claim loop's and the cancel claim's look for claimable runs across
all threads, which that index is for.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.errors import Diagnostic
from psycopg_pool import AsyncConnectionPool

from code_hero.config import create_postgres_checkpointer
from code_hero.persistence.pg_backend import PostgresBackend
from code_hero.persistence.records import RunStatus, ThreadStatus
from code_hero.persistence.registry import PostgresRegistry
from tests.persistence.registry.support import PG_KWARGS, run

pytestmark = pytest.mark.postgres

RUNS = 2000
THREAD = "t00007"

# Each version a run had while PENDING or RUNNING is an entry of the unfinished index.
_FILL = [
    "INSERT INTO code_hero_threads (thread_id, status, metadata, created_at, updated_at) "
    "SELECT 't' || lpad(g::text, 5, '0'), 'IDLE', '{}', now(), now() "
    f"FROM generate_series(0, {RUNS - 1}) g",
    "INSERT INTO code_hero_runs (run_id, thread_id, graph, status, metadata, created_at) "
    "SELECT 'r' || lpad(g::text, 5, '0'), 't' || lpad(g::text, 5, '0'), 'g', 'PENDING', "
    f"'{{}}', now() - interval '1 hour' + g * interval '1 ms' "
    f"FROM generate_series(0, {RUNS - 1}) g",
    "UPDATE code_hero_runs SET status = 'RUNNING'",
    "UPDATE code_hero_runs SET status = 'SUCCESS'",
    "ANALYZE",
]


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


class Plans:
    """The plans auto_explain reported for the statements run on a connection."""

    pool: AsyncConnectionPool[Any]
    registry: PostgresRegistry

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Make `conn` report the plan of each statement it runs, as a notice."""
        for sql in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_format = 'json'",
            "SET auto_explain.log_level = 'notice'",
        ):
            await conn.execute(sql)
        conn.add_notice_handler(self._notice)

    def _notice(self, diag: Diagnostic) -> None:
        text = diag.message_primary or ""
        if "plan:" in text:
            self.seen.append(json.loads(text[text.index("{") :]))

    def indexes(self, marker: str) -> set[str | None]:
        """The indexes the plan of the one statement containing `marker` reads."""
        plans = [p for p in self.seen if marker in p["Query Text"]]
        assert len(plans) == 1, [p["Query Text"] for p in self.seen]
        return {n.get("Index Name") for n in _nodes(plans[0]["Plan"])}


def _reads_the_threads_runs(indexes: set[str | None]) -> None:
    assert "code_hero_runs_unfinished_idx" not in indexes, indexes
    assert "code_hero_runs_thread_idx" in indexes, indexes


@pytest.fixture
async def backend(pg_database: str) -> AsyncIterator[PostgresBackend]:
    """A backend on a database of many finished runs, analysed."""
    backend = PostgresBackend(create_postgres_checkpointer(pg_database))
    await backend.open()
    try:
        async with await psycopg.AsyncConnection.connect(pg_database, **PG_KWARGS) as conn:
            for sql in _FILL:
                await conn.execute(sql)
        yield backend
    finally:
        await backend.close()


@pytest.fixture
async def plans(pg_database: str, backend: PostgresBackend) -> AsyncIterator[Plans]:
    """The plans of what `plans.registry` runs on the backend's database."""
    plans = Plans()
    pool = AsyncConnectionPool(
        pg_database, kwargs=PG_KWARGS, configure=plans.configure, min_size=1, max_size=2, open=False
    )
    await pool.open()
    plans.pool, plans.registry = pool, PostgresRegistry(pool)
    try:
        yield plans
    finally:
        await pool.close()


async def test_admission(plans: Plans) -> None:
    await plans.registry.admit_run(run("new", THREAD), reject_if_busy=True)
    _reads_the_threads_runs(plans.indexes("LIMIT 1"))


async def test_finish_run(plans: Plans) -> None:
    await plans.registry.admit_run(run("new", THREAD), reject_if_busy=True)
    await plans.registry.finish_run("new", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    _reads_the_threads_runs(plans.indexes("UPDATE code_hero_threads SET status"))


async def test_edit_claim(plans: Plans) -> None:
    until = datetime.now(UTC) + timedelta(minutes=1)
    assert await plans.registry.claim_edit(THREAD, until, seen=True) is None
    _reads_the_threads_runs(plans.indexes("LIMIT 1"))


async def test_edit_settled(plans: Plans) -> None:
    assert await plans.registry.settle_edit(THREAD, ThreadStatus.IDLE) is None
    _reads_the_threads_runs(plans.indexes("LIMIT 1"))


async def test_unfinished_runs(plans: Plans) -> None:
    assert await plans.registry.unfinished_runs(THREAD) == []
    _reads_the_threads_runs(plans.indexes("ORDER BY created_at, run_id"))


async def test_keep_latest(plans: Plans, backend: PostgresBackend) -> None:
    # On the reporting pool, swapped in as `reconnect` swaps a new one in.
    own, backend._pool = backend._pool, plans.pool
    try:
        assert await backend.keep_latest(THREAD, 1) == 0
    finally:
        backend._pool = own
    _reads_the_threads_runs(plans.indexes("DELETE FROM checkpoints c USING"))


async def test_a_batchs_run_updates_read_the_runs_by_key(plans: Plans) -> None:
    """An event batch's one UPDATE of its runs (issue 15) finds them by key: joined on
    the function's rows alone, it scanned every run of every thread."""
    fields = {"input_tokens": 1, "output_tokens": 2}
    await plans.registry.store_batch([], {"r00001": fields, "r00002": fields})
    plan = [p for p in plans.seen if "jsonb_populate_recordset" in p["Query Text"]]
    assert len(plan) == 1
    nodes = list(_nodes(plan[0]["Plan"]))
    assert not any(n["Node Type"] == "Seq Scan" for n in nodes), nodes
    assert "code_hero_runs_pkey" in {n.get("Index Name") for n in nodes}
