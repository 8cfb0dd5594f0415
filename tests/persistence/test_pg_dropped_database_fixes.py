"""How the missing tables' outage (`test_pg_dropped_database.py`) is told: concurrent
calls share one table check; a migration ledger dropped alone is reported as such; only
the replica whose setup made the tables says it did; a table check that cannot reach the
database says down."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlparse

import psycopg
import psycopg.errors as pg
import pytest
from psycopg.rows import dict_row

from code_hero.checkpointing import create_postgres_checkpointer
from code_hero.persistence.migrations import SETUP_LOCK_KEY
from code_hero.persistence.pg_backend import PostgresBackend, _remake_tables
from tests.conftest import PG_ADMIN_URL
from tests.faults import until
from tests.persistence.test_down_means_down import _manager
from tests.persistence.test_pg_dropped_database import _recreate

pytestmark = pytest.mark.postgres


async def test_concurrent_calls_share_one_table_check(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        router = manager.router
        backend = router.primary.backend
        assert isinstance(backend, PostgresBackend)
        checks = 0
        check = backend.missing_tables

        async def counted() -> list[str]:
            nonlocal checks
            checks += 1
            return await check()

        monkeypatch.setattr(backend, "missing_tables", counted)
        with psycopg.connect(pg_database) as conn, pytest.raises(pg.UndefinedTable) as raised:
            conn.execute("SELECT * FROM no_such_table_of_ours")
        verdicts = await asyncio.gather(
            *(router.outage(router.primary, raised.value) for _ in range(8))
        )
        assert verdicts == [None] * 8
        assert checks == 1
        assert router.active == 0


async def test_a_dropped_migration_ledger_is_named_as_such(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute("DROP TABLE code_hero_migrations")
        # No call reads it: the primary serves, and one WARNING says the ledger is
        # missing and how to make it again (its migrations are not run from the first).
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                assert (await manager.health_check())["overall_status"] == "healthy"
        said = [r.getMessage() for r in caplog.records if "migration ledger" in r.getMessage()]
        assert len(said) == 1, said
        assert "code_hero_migrations is missing" in said[0]
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(said[0][said[0].index("CREATE TABLE") :].encode())
            (count,) = conn.execute("SELECT count(*) FROM code_hero_migrations").fetchone() or (0,)
        assert count > 0
        assert (await manager.health_check())["overall_status"] == "healthy"


async def test_only_the_replica_that_made_the_tables_says_so(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        backend = manager.router.primary.backend
        assert isinstance(backend, PostgresBackend)
        _recreate(pg_database)
        other: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(
            pg_database, autocommit=True, row_factory=dict_row
        )
        async with other:  # another replica, holding the set-up lock
            await other.execute("SELECT pg_advisory_lock(%s)", (SETUP_LOCK_KEY,))
            checking = asyncio.ensure_future(manager.health_check())

            async def remaking() -> bool:
                return bool(backend._remaking)

            await until(remaking)  # this replica's probe waits for the lock
            assert await _remake_tables(other)  # the other replica makes them
            await other.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_KEY,))
            with caplog.at_level(logging.WARNING):
                report = await checking
        assert report["overall_status"] == "healthy"
        assert "made them again" not in caplog.text


async def test_a_table_check_that_cannot_reach_the_database_says_down(pg_database: str) -> None:
    # The check opens a session of its own, as the probe: a database that refuses new
    # sessions is down, as the probe would find, though the pool's sessions still work.
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        router = manager.router
        with psycopg.connect(pg_database) as conn, pytest.raises(pg.UndefinedTable) as raised:
            conn.execute("SELECT * FROM no_such_table_of_ours")
        name = urlparse(pg_database).path.lstrip("/")
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'.encode())
            try:
                assert await router.outage(router.primary, raised.value) == "down"
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'.encode())
