"""A saturated PostgreSQL pool is busy, not down: what a thread touch does then.

The touch that follows a stored checkpoint (`create=False`, it only moves
`updated_at`) must not fail the write it follows; one that would create the
thread's row answers busy. Nothing fails over either way."""

from __future__ import annotations

import contextlib
from typing import cast

import pytest

from code_hero.checkpointing import EnhancedCheckpointerManager, create_postgres_checkpointer
from code_hero.errors import BackendUnavailableError
from code_hero.persistence.backends import PostgresBackend


async def test_a_busy_pool_drops_a_touch_that_only_moves_updated_at(pg_database: str) -> None:
    config = create_postgres_checkpointer(
        pg_database, pool_min_size=1, pool_max_size=1, pool_timeout=0.5, saver_instances=1
    )
    async with EnhancedCheckpointerManager(config) as manager:
        router = manager.router
        pool = cast(PostgresBackend, router.primary.backend).pool
        async with contextlib.AsyncExitStack() as held:  # every connection, held by others
            for _ in range(pool.max_size):
                await held.enter_async_context(pool.connection())
            await router.touch("busy-1", None, create=False)  # no error: dropped
            with pytest.raises(BackendUnavailableError, match="busy"):
                await router.touch("busy-2", None, create=True)
        assert router.active_slot is router.primary  # nothing failed over
        await router.touch("busy-2", None, create=True)  # not throttled: it retries
        assert await manager.registry.get_thread("busy-2") is not None
