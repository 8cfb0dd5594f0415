"""The PostgreSQL lock bound's configuration (review of pgfault)."""

from __future__ import annotations

import pytest

from code_hero.checkpointing import create_postgres_checkpointer
from code_hero.errors import ConfigurationError
from code_hero.settings import checkpointer_from_env
from tests.persistence.test_down_means_down import _admin, _manager, _stored, _writer
from tests.persistence.test_pg_faults import _pool_lock_timeout


@pytest.mark.postgres
async def test_a_long_lock_bound_still_stores(pg_database: str) -> None:
    # 3,000,000 s (someone turning the bound "off") passes the settings, but
    # PostgreSQL takes at most 2147483647 ms: every pooled connection's configure fails.
    config = create_postgres_checkpointer(
        pg_database, health_check_interval=3600, lock_timeout=3_000_000
    )
    async with _manager(config) as manager:
        await _writer(manager)("long")
        assert manager.router.active == 0
    assert _stored(config, "long") == 1


@pytest.mark.parametrize("raw", ["inf", "nan", "3000000"])
def test_lock_timeouts_postgresql_cannot_take_are_refused(raw: str) -> None:
    env = {"CODE_HERO_DATABASE_URL": "postgresql://db/x", "CODE_HERO_LOCK_TIMEOUT": raw}
    with pytest.raises(ConfigurationError, match="CODE_HERO_LOCK_TIMEOUT"):
        checkpointer_from_env(env)


@pytest.mark.postgres
async def test_a_database_lock_timeout_of_zero_wins(pg_database: str) -> None:
    # README: "a lock_timeout the database or role sets wins". An explicit 0 (waits
    # unbounded, on purpose) is read as "none set" and replaced by the bound.
    with _admin(pg_database) as admin:
        admin.execute(f'ALTER DATABASE "{admin.info.dbname}" SET lock_timeout = 0')
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        assert await _pool_lock_timeout(manager) == "0"


@pytest.mark.postgres
async def test_a_lock_timeout_of_zero_sets_no_bound(pg_database: str) -> None:
    # The memory fallback: serve's durable one would be a file in the working folder.
    env = {
        "CODE_HERO_DATABASE_URL": pg_database,
        "CODE_HERO_LOCK_TIMEOUT": "0",
        "CODE_HERO_FALLBACK_PATH": "memory",
    }
    config = checkpointer_from_env(env)
    assert config.lock_timeout == 0
    async with _manager(config) as manager:
        assert await _pool_lock_timeout(manager) == "0"
