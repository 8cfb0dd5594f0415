"""A run meets a saturated PostgreSQL pool mid-way (the database answering): its
checkpoint writes wait and try again rather than end the run; a client's write still
answers busy at once."""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.backends import PostgresBackend
from code_hero.persistence.fallback import PoolBusyError
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import StartRun
from tests.faults import on_the_primary
from tests.runs.conftest import SLOW_SPEC
from tests.runs.test_deletes import first_checkpoint, wait_status


@pytest.mark.parametrize(
    ("patience", "delay", "hold"),
    [
        (None, 0.1, 2.0),  # several steps' writes time out while the pool is held
        # The patience counts from the first busy answer, which comes after the pool's
        # timeout (the default 5 s patience equals the default timeout): here shorter
        # than that timeout, and a write's second try, 0.55 s after its first, gets one.
        (0.4, 0.05, 0.8),
    ],
    ids=["default-patience", "patience-after-first-busy"],
)
async def test_a_run_outlasts_a_moment_of_saturated_pool(
    pg_database: str,
    monkeypatch: pytest.MonkeyPatch,
    patience: float | None,
    delay: float,
    hold: float,
) -> None:
    if patience is not None:
        monkeypatch.setattr("code_hero.persistence.managed.RUN_WRITE_PATIENCE", patience)
    config = create_postgres_checkpointer(
        pg_database, pool_min_size=2, pool_max_size=2, pool_timeout=0.5, saver_instances=1
    )
    settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_SPEC})
    async with Gateway(settings) as gw:
        await on_the_primary(gw.manager)  # under load its open may time out first
        run = await gw.start_run(StartRun(graph="slow", input={"delay": delay}))
        await wait_status(gw, run.run_id, RunStatus.RUNNING)
        await first_checkpoint(gw, run.thread_id)
        router = gw.manager.router
        pool = cast(PostgresBackend, router.primary.backend).pool
        async with contextlib.AsyncExitStack() as held:  # every connection, held by others
            for _ in range(pool.max_size):
                await held.enter_async_context(pool.connection())
            await asyncio.sleep(hold)

        ended = await gw.executor.wait(run.run_id, limit=60)

        assert ended.status is RunStatus.SUCCESS, ended.error
        assert router.active_slot is router.primary  # nothing failed over


async def test_a_clients_write_answers_busy_without_waiting(pg_database: str) -> None:
    """The same moment for a checkpoint write outside a run (the seed's own graphs, no run
    in its config): busy, though the pool frees before a run's write would give up."""
    config = create_postgres_checkpointer(
        pg_database, pool_min_size=2, pool_max_size=2, pool_timeout=0.5, saver_instances=1
    )
    async with Gateway(GatewaySettings(checkpointer=config)) as gw:
        await on_the_primary(gw.manager)  # under load its open may time out first
        saver = gw.manager.get_checkpointer()
        plain: RunnableConfig = {"configurable": {"thread_id": "plain", "checkpoint_ns": ""}}
        pool = cast(PostgresBackend, gw.manager.router.primary.backend).pool
        async with contextlib.AsyncExitStack() as held:
            for _ in range(pool.max_size):
                await held.enter_async_context(pool.connection())
            write = asyncio.create_task(saver.aput(plain, empty_checkpoint(), {}, {}))
            await asyncio.sleep(2.0)
        with pytest.raises(PoolBusyError):
            await write
