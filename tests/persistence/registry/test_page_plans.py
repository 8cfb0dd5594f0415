"""A page of threads is planned once per connection, not at every page (PostgreSQL).

PostgreSQL plans a prepared statement afresh at each of its first five runs, then
keeps a generic plan if it costs no more than those did. With the page's LIMIT a
parameter, the generic plan had to guess it (a tenth of the rows) and always cost
more, so every page of threads was planned anew (issue 15).
"""

from __future__ import annotations

from typing import Any

import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.records import ThreadFilter, ThreadOrder
from code_hero.persistence.registry import PostgresRegistry
from tests.persistence.registry.support import PG_KWARGS

pytestmark = pytest.mark.postgres

PAGES = 12


async def test_pages_of_threads_are_planned_generically(pg_database: str) -> None:
    # One connection: every page, and the look at its plans, run on it.
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        pg_database, kwargs=PG_KWARGS, min_size=1, max_size=1, open=False
    )
    await pool.open()
    try:
        registry = PostgresRegistry(pool)
        await registry.setup()
        # A store of a thousand threads, its statistics known, as a server's would be.
        await registry.touch_threads({f"t{i:04}": None for i in range(1000)})
        async with pool.connection() as conn:
            await conn.execute("ANALYZE code_hero_threads")
        for _ in range(PAGES):
            page = await registry.list_threads(ThreadFilter(), first=10, order=ThreadOrder())
            assert [t.thread_id for t in page.items] == [f"t{i:04}" for i in range(999, 989, -1)]
            assert page.has_next_page
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE 'SELECT % FROM code_hero_threads %ORDER BY updated_at%'",
                prepare=False,  # not itself among the prepared statements it reads
            )
            plans = await cur.fetchall()
    finally:
        await pool.close()
    assert len(plans) == 1
    # Five custom plans to compare with, then the generic one for every page after.
    assert plans[0]["generic_plans"] + plans[0]["custom_plans"] == PAGES
    assert plans[0]["custom_plans"] <= 5
