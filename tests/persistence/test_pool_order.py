"""The PostgreSQL pool lends the connection most recently returned first.

psycopg_pool lends its idle connections in turn; requests one after another
then each ran on another server process of the sixteen, which planned the
statement anew and whose caches were cold (issue 15)."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg.rows import dict_row

from code_hero.persistence.pg_backend import LendingPool

pytestmark = pytest.mark.postgres


def _pool(url: str) -> LendingPool:
    kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    return LendingPool(url, min_size=3, max_size=3, kwargs=kwargs, open=False)


async def test_requests_one_after_another_run_on_one_server_process(pg_database: str) -> None:
    async with _pool(pg_database) as pool:
        await pool.wait()
        pids = set()
        for _ in range(6):
            async with pool.connection() as conn:
                row = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
                assert row is not None
                pids.add(row["pid"])
    assert len(pids) == 1


async def test_the_connection_returned_last_is_lent_first(pg_database: str) -> None:
    async with _pool(pg_database) as pool:
        await pool.wait()
        held = [await pool.getconn() for _ in range(3)]
        for conn in held:
            await pool.putconn(conn)
        again = await pool.getconn()
        assert again is held[-1]
        assert pool.lent == {again}
        await pool.putconn(again)


async def test_a_connection_idle_past_its_lifetime_is_lent_and_replaced(pg_database: str) -> None:
    """psycopg_pool expires a connection only as it comes back: one idle at the
    bottom, never lent while the one on top serves, is lent once past its lifetime
    and replaced when returned."""
    async with _pool(pg_database) as pool:
        await pool.wait()
        held = [await pool.getconn() for _ in range(3)]
        for conn in held:
            await pool.putconn(conn)
        held[0]._expire_at = 0.0  # the one idle longest is past its max_lifetime
        lent = await pool.getconn()
        assert lent is held[0]
        await pool.putconn(lent)
        assert lent.closed
        await pool.wait()  # its replacement
        assert pool.get_stats()["pool_available"] == 3
