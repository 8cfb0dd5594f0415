"""Review of `refuse`: failing tests for defects found in the missing-table path.

1. The missing-table check (`RouterFailover._lacks_tables` -> `missing_tables`)
   takes a pool connection. On a saturated pool (busy, not down) a call's own
   undefined_table/undefined_column waits out pool_timeout and the PoolTimeout
   is read as "cannot say: down": a busy, healthy database fails over.
2. A recreated database where the schema named by the connection's search_path
   is gone (or where the role may not CREATE in it: PostgreSQL 15's public schema
   on a database recreated by a superuser) makes `_make_missing_tables` raise a
   ProgrammingError (3F000 / 42501), which is no "backend error": the probe raises
   it out of `router.check()`, so every health check logs a traceback and
   `health_check()` raises instead of reporting DEGRADED.
"""

from __future__ import annotations

from urllib.parse import quote

import psycopg
import psycopg.errors as pg
import pytest

from code_hero.checkpointing import create_postgres_checkpointer
from code_hero.persistence.diagnosis import error_category
from code_hero.persistence.pg_backend import PostgresBackend
from code_hero.persistence.pg_tables import TABLES, TablesMissing
from tests.persistence.test_down_means_down import _manager, _writer
from tests.persistence.test_pg_dropped_database import _recreate

pytestmark = pytest.mark.postgres


async def test_a_calls_own_undefined_column_on_a_saturated_pool_is_no_outage(
    pg_database: str,
) -> None:
    config = create_postgres_checkpointer(
        pg_database,
        health_check_interval=3600,
        pool_min_size=2,
        pool_max_size=2,
        pool_timeout=1,
        saver_instances=1,
    )
    async with _manager(config) as manager:
        router = manager.router
        backend = router.primary.backend
        assert isinstance(backend, PostgresBackend)
        with psycopg.connect(pg_database) as conn, pytest.raises(pg.UndefinedColumn) as raised:
            conn.execute("SELECT no_such_column FROM checkpoints")
        pool = backend.pool
        async with pool.connection(), pool.connection():  # busy: every connection lent
            assert backend.pool_saturated()
            # Every table is there and the database answers: the call's own error.
            verdict = await router.outage(router.primary, raised.value)
        assert verdict is None
        assert router.active == 0


async def test_a_recreated_database_without_the_search_path_schema_is_reported_not_raised(
    pg_database: str,
) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA gw")
    url = f"{pg_database}?options={quote('-csearch_path=gw')}"
    config = create_postgres_checkpointer(url, health_check_interval=3600)
    async with _manager(config) as manager:
        write = _writer(manager)
        await write("before")
        _recreate(pg_database)  # the new database has no schema gw
        await write("during")
        assert manager.router.active == 1
        # The health check must report the outage, not raise InvalidSchemaName.
        report = await manager.health_check()
        assert report["overall_status"] == "degraded"
        error = manager.router.primary.last_error or ""
        assert error_category(error) == "tables missing"
        assert "no schema has been selected to create in (search_path gw)" in error


async def test_the_probe_makes_the_tables_again_without_a_connection_of_the_old_pool(
    pg_database: str,
) -> None:
    # After a database gone for a while, the old pool retries its lost connections
    # with a doubling backoff (the reason `reconnect` opens a fresh pool before the
    # copy-back); `_make_missing_tables` runs in the probe, before that, on the old
    # pool, so each probe times out until the backoff ends (measured: gone 40 s,
    # healthy 18 s after the database was back, three probes timed out). Here the
    # old pool can lend nothing, deterministically: both connections are held.
    config = create_postgres_checkpointer(
        pg_database,
        health_check_interval=3600,
        pool_min_size=2,
        pool_max_size=2,
        pool_timeout=1,
        saver_instances=1,
    )
    async with _manager(config) as manager:
        write = _writer(manager)
        backend = manager.router.primary.backend
        assert isinstance(backend, PostgresBackend)
        pool = backend.pool
        async with pool.connection(), pool.connection():
            _recreate(pg_database)
            # Declared as a call meeting the missing tables would (here a call's pool
            # timeout on a saturated pool whose database answers would be "busy").
            manager.router.fail_primary(TablesMissing(list(TABLES)))
            await write("during")
            assert manager.router.active == 1
            # The database answers on a connection of the probe's own and may be set up.
            report = await manager.health_check()
            assert report["overall_status"] == "healthy", manager.router.primary.last_error
