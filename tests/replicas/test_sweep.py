"""Two gateways on one PostgreSQL database sweep expired threads: one at a time, each
expired thread deleted once.

The replicas are in-process `Gateway`s (each with its own pool, as two servers
have): their sweeps are called directly and at once, so the race is certain
instead of waiting on the servers' sweep intervals.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from code_hero.auth import ANONYMOUS
from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings

pytestmark = pytest.mark.postgres


@pytest.fixture
async def replicas(pg_database: str) -> AsyncIterator[tuple[Gateway, Gateway]]:
    async with AsyncExitStack() as stack:
        pair = [
            await stack.enter_async_context(
                Gateway(
                    GatewaySettings(
                        checkpointer=create_postgres_checkpointer(
                            pg_database, pool_min_size=1, pool_max_size=4, saver_instances=2
                        ),
                        sweep_interval=None,
                    )
                )
            )
            for _ in range(2)
        ]
        yield pair[0], pair[1]


async def expire(gateway: Gateway, count: int) -> set[str]:
    """`count` threads with a ttl, stored as last updated long enough ago to have expired."""
    registry = gateway.manager.registry
    then = datetime.now(UTC) - timedelta(hours=1)
    ids = set()
    for _ in range(count):
        made = await gateway.create_thread(ttl_seconds=60, caller=ANONYMOUS)
        await registry.put_thread(replace(made, created_at=then, updated_at=then))
        ids.add(made.thread_id)
    return ids


async def test_one_replica_sweeps_at_a_time(replicas: tuple[Gateway, Gateway]) -> None:
    a, b = replicas
    async with a.manager.registry.sweeping() as mine:
        assert mine
        async with b.manager.registry.sweeping() as theirs:
            assert not theirs  # a holds the sweep
        assert await b.sweep_expired() == []
    async with b.manager.registry.sweeping() as theirs:
        assert theirs  # released


async def test_two_replicas_delete_each_expired_thread_once(
    replicas: tuple[Gateway, Gateway],
) -> None:
    a, b = replicas
    expired = await expire(a, 40)
    live = await a.create_thread(ttl_seconds=3600, caller=ANONYMOUS)
    deleted: list[str] = []
    while True:
        rounds = await asyncio.gather(a.sweep_expired(batches=1), b.sweep_expired(batches=1))
        deleted += [t for swept in rounds for t in swept]
        if not await a.manager.registry.expired_thread_ids(datetime.now(UTC), limit=1):
            break
    assert sorted(deleted) == sorted(expired)  # every one, none twice
    assert await b.manager.get_thread(live.thread_id) is not None
