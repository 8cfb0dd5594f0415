"""Review of `fixrefuse`: the probe remakes tables on its own connection, bounded by
the probe's timeout, which cancels it wherever it is.

The saver's migrations run one by one in autocommit, three of them CREATE INDEX
CONCURRENTLY ... IF NOT EXISTS. One cancelled while it waits out an older snapshot
(any open transaction in the database) leaves its index behind INVALID, and its
migration unrecorded: the next probe runs it again, finds the name taken, skips it
(IF NOT EXISTS) and records it done. The primary is healthy again with an index
that PostgreSQL never uses and never repairs.
"""

from __future__ import annotations

import logging

import psycopg
import pytest
from langgraph.checkpoint.postgres.base import BasePostgresSaver

from code_hero.checkpointing import create_postgres_checkpointer
from code_hero.persistence.migrations import SETUP_LOCK_KEY
from tests.faults import until
from tests.persistence.test_down_means_down import _manager, _writer
from tests.persistence.test_pg_dropped_database import _recreate

pytestmark = pytest.mark.postgres

_INVALID = (
    "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "WHERE NOT i.indisvalid AND c.relname LIKE 'checkpoint%%'"
)


async def test_a_remake_cut_short_by_the_probe_timeout_leaves_no_invalid_index(
    pg_database: str,
) -> None:
    config = create_postgres_checkpointer(
        pg_database, health_check_interval=3600, pool_timeout=1, saver_instances=1
    )
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
    config = create_postgres_checkpointer(
        pg_database, health_check_interval=3600, pool_timeout=1, saver_instances=1
    )
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
    config = create_postgres_checkpointer(
        pg_database, health_check_interval=3600, pool_timeout=1, saver_instances=1
    )
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
    config = create_postgres_checkpointer(
        pg_database, health_check_interval=3600, pool_timeout=2, saver_instances=1
    )
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
