"""Several replicas starting together on a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio

import pytest

from code_hero.checkpointing import EnhancedCheckpointerManager, create_postgres_checkpointer

pytestmark = pytest.mark.postgres


async def test_replicas_starting_together_all_reach_the_database(pg_database: str) -> None:
    # The savers' set-up builds indexes CONCURRENTLY, which waits for every open
    # transaction: a replica waiting for the set-up lock inside one used to deadlock
    # the other until the open timed out, and both ran on their fallbacks.
    managers = [
        EnhancedCheckpointerManager(create_postgres_checkpointer(pg_database, pool_timeout=2))
        for _ in range(3)
    ]
    try:
        opened = await asyncio.gather(*(m.initialize() for m in managers))
        assert opened == [True, True, True]
        assert {m.overall_status for m in managers} == {"healthy"}
    finally:
        for manager in managers:
            await manager.cleanup()
