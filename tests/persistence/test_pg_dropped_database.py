"""The gateway's database dropped and recreated under it, its tables gone; and calls
waiting for a connection when the database starts refusing sessions.

`DROP DATABASE ... WITH (FORCE)` then `CREATE DATABASE` under a running gateway
leaves a database that accepts connections and answers the probe but has none
of our tables. Before, the probe called it healthy, every call answered
undefined_table (INTERNAL), and the copy-back quarantined the outage's writes
into it. Now a missing table, confirmed by asking the database, is an outage,
and the probe makes the tables again as at start (or keeps the outage when
nobody here may make them), so the outage's writes go in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlparse

import psycopg
import psycopg.errors as pg
import pytest

from code_hero.checkpointing import create_postgres_checkpointer
from code_hero.persistence.diagnosis import error_category
from code_hero.persistence.fallback_state import PrimaryUnreachableError
from code_hero.persistence.migrations import PURGE_THREAD_SIGNATURE
from code_hero.persistence.pg_backend import PostgresBackend
from code_hero.persistence.pg_tables import FUNCTIONS, TABLES, TablesMissing
from tests.conftest import PG_ADMIN_URL
from tests.faults import until
from tests.persistence.test_down_means_down import _manager, _stored, _writer

pytestmark = pytest.mark.postgres


def _recreate(url: str) -> None:
    """Drop the database of `url` with its sessions, and make it again, empty."""
    name = urlparse(url).path.lstrip("/")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)'.encode())
        admin.execute(f'CREATE DATABASE "{name}"'.encode())


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows.fetchall()}


async def test_a_recreated_database_is_an_outage_and_gets_its_tables_back(
    pg_database: str,
) -> None:
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        assert set(TABLES) <= _tables(pg_database)  # the list names every table we make
        write = _writer(manager)
        await write("before")
        _recreate(pg_database)

        # The pool's sessions were ended; new ones find no tables: the write goes on
        # on the fallback instead of failing with undefined_table.
        await write("during")
        primary = manager.router.primary
        assert manager.router.active == 1
        assert error_category(primary.last_error) == "tables missing"

        # The probe makes the tables again, and the copy-back puts the write in.
        assert (await manager.health_check())["overall_status"] == "healthy"
        assert manager.router.pending_sync == 0 and manager.router.quarantined == 0
        assert _stored(config, "during") == 1
        assert _stored(config, "before") == 0  # dropped with the database
        await write("after")
        assert _stored(config, "after") == 1


async def test_without_auto_setup_the_outage_lasts_until_the_tables_are_back(
    pg_database: str,
) -> None:
    made = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(made):
        pass  # the tables, made once
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600, auto_setup=False)
    async with _manager(config) as manager:
        write = _writer(manager)
        _recreate(pg_database)
        await write("during")
        assert manager.router.active == 1
        backend = manager.router.primary.backend
        assert backend is not None
        with pytest.raises(TablesMissing) as missing:
            await backend.probe()
        assert set(missing.value.missing) == set(TABLES) | set(FUNCTIONS)
        assert (await manager.health_check())["overall_status"] == "degraded"
        assert error_category(manager.router.primary.last_error) == "tables missing"

        async with _manager(made):
            pass  # an administrator makes them (a restore, `code-hero serve` elsewhere)
        assert (await manager.health_check())["overall_status"] == "healthy"
        assert _stored(config, "during") == 1


async def test_the_deletion_function_dropped_alone_is_made_again(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The deletion's function gone while every table and its migration's record stay
    (dropped by hand, a restore of the tables only): a deletion is an outage, not
    undefined_function (INTERNAL) for good, and the probe makes the function again,
    saying that no data was lost with it (not the tables' "what they held is gone")."""
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        write = _writer(manager)
        await write("kept")
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f"DROP FUNCTION {PURGE_THREAD_SIGNATURE}".encode())
        await write("doomed")
        # An outage (the fallback's "retry in" answer), never undefined_function.
        with contextlib.suppress(PrimaryUnreachableError):
            await manager.purge_idle_thread("doomed")
        assert manager.router.active == 1
        assert error_category(manager.router.primary.last_error) == "tables missing"
        caplog.set_level(logging.WARNING)
        assert (await manager.health_check())["overall_status"] == "healthy"
        said = [r.getMessage() for r in caplog.records if "made them again" in r.getMessage()]
        assert said and not any("is gone" in line for line in said), said
        with psycopg.connect(pg_database) as conn:
            row = conn.execute(
                f"SELECT to_regprocedure('{PURGE_THREAD_SIGNATURE}')".encode()
            ).fetchone()
        assert row is not None and row[0] is not None
        gone = await manager.purge_idle_thread("doomed")
        assert gone is not None and gone.deleted
        assert _stored(config, "doomed") == 0 and _stored(config, "kept") == 1


async def test_a_missing_table_with_every_table_there_fails_only_its_call(
    pg_database: str,
) -> None:
    # undefined_table on a database that has all our tables is a bug in that
    # statement, not an outage: nothing fails over.
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        router = manager.router
        with psycopg.connect(pg_database) as conn, pytest.raises(pg.UndefinedTable) as raised:
            conn.execute("SELECT * FROM no_such_table_of_ours")
        assert await router.outage(router.primary, raised.value) is None
        assert router.active == 0


async def test_calls_waiting_for_a_connection_go_on_when_the_primary_fails(
    pg_database: str,
) -> None:
    # Sessions refused (a changed password, ALLOW_CONNECTIONS false, slots taken) leave
    # the pool unable to open connections: calls waiting for one waited out the pool's
    # timeout (5 s by default; here an hour) after the router had failed over.
    config = create_postgres_checkpointer(
        pg_database,
        health_check_interval=3600,
        pool_min_size=2,
        pool_max_size=2,
        pool_timeout=3600,
        saver_instances=1,
    )
    async with _manager(config) as manager:
        write = _writer(manager)
        await write("before")
        backend = manager.router.primary.backend
        assert isinstance(backend, PostgresBackend)
        pool = backend.pool
        async with pool.connection(), pool.connection():  # every connection lent
            waiting = asyncio.ensure_future(write("waiting"))

            async def queued() -> bool:
                return bool(pool.get_stats().get("requests_waiting", 0))

            await until(queued)
            manager.router.fail_primary(psycopg.OperationalError("connection refused"))
            await until(lambda: _done(waiting))
            await waiting  # on the fallback, not an error
            assert manager.router.active == 1 and manager.router.pending_sync > 0
        assert (await manager.health_check())["overall_status"] == "healthy"
        assert _stored(config, "waiting") == 1


async def _done(task: asyncio.Future[object]) -> bool:
    return task.done()
