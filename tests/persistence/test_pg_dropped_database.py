"""The gateway's database dropped and recreated under it, its tables gone; and calls
waiting for a connection when the database starts refusing sessions.

`DROP DATABASE ... WITH (FORCE)` then `CREATE DATABASE` under a running gateway
leaves a database that accepts connections and answers the probe but has none
of our tables. Before, the probe called it healthy, every call answered
undefined_table (INTERNAL), and the copy-back quarantined the outage's writes
into it. Now a missing table, confirmed by asking the database, is an outage,
and the probe makes the tables again as at start (or keeps the outage when
nobody here may make them), so the outage's writes go in.

What may not be an outage is none: a call's own undefined_table or undefined_column
on a saturated pool, a migration ledger dropped under a serving primary. The missing
tables' outage is reported, not raised (a search_path's schema gone with the
database). The probe remakes the tables on a connection of its own, bounded by its
timeout and by a lock_timeout of its own, and a remake cut short (or a start killed
mid CREATE INDEX CONCURRENTLY) leaves no INVALID index behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import quote, urlparse

import psycopg
import psycopg.errors as pg
import pytest
from langgraph.checkpoint.postgres.base import BasePostgresSaver
from psycopg_pool import AsyncConnectionPool

from code_hero.checkpointing import create_postgres_checkpointer
from code_hero.config import CheckpointerConfig
from code_hero.persistence.diagnosis import error_category
from code_hero.persistence.fallback_state import PrimaryUnreachableError
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.migrations import PURGE_THREAD_SIGNATURE, SETUP_LOCK_KEY
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


def _one_saver(url: str, pool_timeout: float = 1, **pool: Any) -> CheckpointerConfig:
    """A primary at `url` with one saver, probed only when a test says so."""
    return create_postgres_checkpointer(
        url, health_check_interval=3600, pool_timeout=pool_timeout, saver_instances=1, **pool
    )


def _two_connections(url: str, pool_timeout: float = 1) -> CheckpointerConfig:
    """A primary at `url` whose pool has two connections, both a test's to hold."""
    return _one_saver(url, pool_timeout, pool_min_size=2, pool_max_size=2)


def _primary_pool(manager: EnhancedCheckpointerManager) -> AsyncConnectionPool[Any]:
    """The pool of `manager`'s PostgreSQL primary."""
    backend = manager.router.primary.backend
    assert isinstance(backend, PostgresBackend)
    return backend.pool


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
    config = _two_connections(pg_database, pool_timeout=3600)
    async with _manager(config) as manager:
        write = _writer(manager)
        await write("before")
        pool = _primary_pool(manager)
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


async def test_a_calls_own_undefined_column_on_a_saturated_pool_is_no_outage(
    pg_database: str,
) -> None:
    config = _two_connections(pg_database)
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
    config = _two_connections(pg_database)
    async with _manager(config) as manager:
        write = _writer(manager)
        pool = _primary_pool(manager)
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


_INVALID = (
    "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "WHERE NOT i.indisvalid AND c.relname LIKE 'checkpoint%%'"
)


async def test_a_remake_cut_short_by_the_probe_timeout_leaves_no_invalid_index(
    pg_database: str,
) -> None:
    config = _one_saver(pg_database)
    async with _manager(config) as manager:
        write = _writer(manager)
        await write("before")
        _recreate(pg_database)
        await write("during")  # the outage: the probe will make the tables again
        assert manager.router.active == 1
        with (
            psycopg.connect(pg_database, autocommit=True) as watch,
            psycopg.connect(pg_database) as old,
        ):
            # An open transaction holding a snapshot (a report, a psql session): every
            # CREATE INDEX CONCURRENTLY in this database waits for it to end.
            old.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            old.execute("SELECT 1")
            report = await manager.health_check()  # the probe gives up at its timeout
            assert report["overall_status"] == "degraded"

            def ended() -> bool:
                busy = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                    "AND query ILIKE '%%CREATE INDEX CONCURRENTLY%%' AND pid <> pg_backend_pid()"
                ).fetchone()
                held = watch.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND ((classid::bigint << 32) | objid::bigint) = %s",
                    (SETUP_LOCK_KEY,),
                ).fetchone()
                return busy == (0,) and held == (0,)

            async def probe_ended() -> bool:
                return ended()

            await until(probe_ended)  # the abandoned probe's cancel reached the server
            old.rollback()
            assert (await manager.health_check())["overall_status"] == "healthy"
            (invalid,) = watch.execute(_INVALID).fetchone() or (0,)
        assert invalid == 0, "an INVALID index of the saver's was left and never remade"


async def test_a_ledger_dropped_under_a_serving_primary_does_not_fail_it_over(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    # checkpoint_migrations dropped alone while the database serves: every call works
    # (none reads it), yet the probe reruns the saver's migrations from the first on its
    # own connection, with no lock_timeout: ALTER TABLE checkpoint_blobs queues for an
    # ACCESS EXCLUSIVE lock behind any open reader (stalling every later call on that
    # table meanwhile) until the probe's timeout, and the timeout fails the primary over.
    config = _one_saver(pg_database)
    async with _manager(config) as manager:
        await _writer(manager)("before")
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute("DROP TABLE checkpoint_migrations")
        with psycopg.connect(pg_database) as reader, caplog.at_level(logging.WARNING):
            reader.execute("SELECT count(*) FROM checkpoint_blobs")  # a read, still open
            for _ in range(2):
                assert (await manager.health_check())["overall_status"] == "healthy"
            error = manager.router.primary.last_error
            reader.rollback()
        assert manager.router.active == 0, error
        # Said once, with the SQL restoring it; the migrations did not run.
        said = [r.getMessage() for r in caplog.records if "migration ledger" in r.getMessage()]
        assert len(said) == 1, said
        assert "CREATE TABLE checkpoint_migrations" in said[0]
        with psycopg.connect(pg_database, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('checkpoint_migrations')").fetchone() == (None,)
            conn.execute(said[0][said[0].index("CREATE TABLE") :].encode())
            rows = conn.execute("SELECT count(*) FROM checkpoint_migrations").fetchone()
        assert rows == (len(BasePostgresSaver.MIGRATIONS),)


async def test_a_start_after_one_killed_mid_create_index_concurrently_rebuilds_it(
    pg_database: str,
) -> None:
    # A replica killed at its first start during migration 6 (CREATE INDEX
    # CONCURRENTLY checkpoints_thread_id_idx) leaves the index INVALID and the
    # migration unrecorded. Made here the way PostgreSQL leaves one: a CREATE INDEX
    # CONCURRENTLY that fails (a unique one, on duplicates) under the saver's name.
    config = _one_saver(pg_database)
    async with _manager(config) as manager:
        write = _writer(manager)
        await write("twice")
        await write("twice")
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP INDEX checkpoints_thread_id_idx")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY checkpoints_thread_id_idx "
                "ON checkpoints(thread_id)"
            )
        conn.execute("DELETE FROM checkpoint_migrations WHERE v >= 6")
        assert conn.execute(_INVALID).fetchone() == (1,)
    async with _manager(config) as manager:  # the next start
        assert (await manager.health_check())["overall_status"] == "healthy"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        assert conn.execute(_INVALID).fetchone() == (0,)
        unique = conn.execute(
            "SELECT i.indisunique FROM pg_index i "
            "WHERE i.indexrelid = 'checkpoints_thread_id_idx'::regclass"
        ).fetchone()
        assert unique == (False,)  # the saver's index, made again


async def test_a_remake_waits_for_a_lock_a_bounded_time_and_says_so(pg_database: str) -> None:
    # A remake of a recreated database whose CREATE INDEX CONCURRENTLY waits out an
    # open transaction gives up at its own lock_timeout, not the probe's: the outage
    # says why (a lock not had), not that the probe timed out.
    config = _one_saver(pg_database, pool_timeout=2)
    async with _manager(config) as manager:
        _recreate(pg_database)
        await _writer(manager)("during")
        assert manager.router.active == 1
        with psycopg.connect(pg_database) as old:
            old.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            old.execute("SELECT 1")
            assert (await manager.health_check())["overall_status"] == "degraded"
            error = manager.router.primary.last_error or ""
            old.rollback()
        assert "lock timeout" in error, error
        assert (await manager.health_check())["overall_status"] == "healthy"
