"""PostgreSQL faults other than a server that is down, through the manager.

A database that turned read-only (a failover to a standby, or
default_transaction_read_only set on) answers, but no write goes in: it is an
outage, as SQLite's read-only file is. Writes go on on the fallback, the probe
keeps the outage until a new session may write, and the copy-back heals it.
"""

from __future__ import annotations

import psycopg.errors as pg
import pytest

from code_hero.checkpointing import create_postgres_checkpointer
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
