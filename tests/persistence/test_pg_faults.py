"""PostgreSQL faults other than a server that is down, through the manager.

A lock another session holds (a LOCK TABLE, a VACUUM FULL, a row kept FOR
UPDATE) is waited for `lock_timeout` seconds at most, then fails the one call
as busy; the database's own lock_timeout wins when it sets one.

A database that turned read-only (a failover to a standby, or
default_transaction_read_only set on) answers, but no write goes in: it is an
outage, as SQLite's read-only file is. Writes go on on the fallback, the probe
keeps the outage until a new session may write, and the copy-back heals it.
"""

from __future__ import annotations

import asyncio

import psycopg.errors as pg
import pytest

from code_hero.checkpointing import EnhancedCheckpointerManager, create_postgres_checkpointer
from code_hero.errors import BackendUnavailableError
from code_hero.persistence.backends import PostgresBackend
from code_hero.persistence.contention import contention
from code_hero.persistence.diagnosis import error_category
from tests.persistence.test_down_means_down import (
    _admin,
    _manager,
    _stored,
    _terminate_idle_sessions,
    _writer,
)


@pytest.mark.postgres
async def test_read_only_database_fails_over_and_heals(pg_database: str) -> None:
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        write = _writer(manager)
        await write("before")
        with _admin(pg_database) as admin:
            dbname = admin.info.dbname
            admin.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
        # The pool's sessions started writable: new ones (as after a failover) are not.
        assert await _terminate_idle_sessions(pg_database) >= 1
        await write("during")  # on the fallback, not an error
        assert manager.router.active == 1
        assert error_category(manager.router.primary.last_error) == "read-only database"
        # The server answers, but a new session still cannot write: still an outage,
        # found by the probe itself (no copy-back is tried and stopped at each probe).
        backend = manager.router.primary.backend
        assert backend is not None
        with pytest.raises(pg.ReadOnlySqlTransaction):
            await backend.probe()
        assert (await manager.health_check())["overall_status"] == "degraded"
        assert error_category(manager.router.primary.last_error) == "read-only database"
        assert manager.router.pending_sync > 0
        assert _stored(config, "during") == 0

        with _admin(pg_database) as admin:
            admin.execute("SET default_transaction_read_only = off")  # this session only
            admin.execute(f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')
        assert (await manager.health_check())["overall_status"] == "healthy"
        assert manager.router.pending_sync == 0
        assert _stored(config, "during") == 1
        await write("after")  # the pool's sessions after the outage may write
        assert _stored(config, "after") == 1


async def _pool_lock_timeout(manager: EnhancedCheckpointerManager) -> str:
    backend = manager.router.primary.backend
    assert isinstance(backend, PostgresBackend)
    async with backend.pool.connection() as conn:
        cur = await conn.execute("SHOW lock_timeout")
        row = await cur.fetchone()
    assert row is not None
    return str(row["lock_timeout"])


@pytest.mark.postgres
async def test_a_lock_held_long_fails_the_call_busy_not_waits_for_it(pg_database: str) -> None:
    # A LOCK TABLE held a minute (a VACUUM FULL, a migration) held every request that
    # needed the table as long, with nothing said; the pool's sessions bound the wait.
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600, lock_timeout=0.2)
    async with _manager(config) as manager:
        assert await _pool_lock_timeout(manager) == "200ms"
        write = _writer(manager)
        await write("locked")
        with _admin(pg_database) as admin, admin.transaction():
            admin.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
            # Guarded against a hang only: the lock is held until the block ends.
            with pytest.raises(pg.LockNotAvailable) as caught:
                await asyncio.wait_for(write("locked"), 60)
            assert isinstance(contention(caught.value), BackendUnavailableError)
            assert manager.router.active == 0  # no outage: the database serves
        await write("locked")
        assert _stored(config, "locked") == 2


@pytest.mark.postgres
async def test_the_databases_own_lock_timeout_wins(pg_database: str) -> None:
    with _admin(pg_database) as admin:
        admin.execute(f"ALTER DATABASE \"{admin.info.dbname}\" SET lock_timeout = '7s'")
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        assert await _pool_lock_timeout(manager) == "7s"


@pytest.mark.postgres
async def test_a_copy_back_that_meets_a_held_lock_is_retried_once_it_is_free(
    pg_database: str,
) -> None:
    # The bound holds for the copy-back too: an entry that meets the lock is
    # quarantined (kept, retried at every check), not waited for with new writes held.
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600, lock_timeout=0.2)
    async with _manager(config) as manager:
        manager.router.fail_primary(ConnectionRefusedError("refused"))  # an outage
        await _writer(manager)("outage")
        with _admin(pg_database) as admin, admin.transaction():
            admin.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
            await manager.health_check()
            assert manager.router.quarantined > 0
        assert (await manager.health_check())["overall_status"] == "healthy"
        assert manager.router.quarantined == 0
        assert _stored(config, "outage") == 1
