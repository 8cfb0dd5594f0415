"""A Gateway on each backend, with the slow test graph loaded by path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import StartRun

SLOW_SPEC = f"{Path(__file__).with_name('slow_graph.py')}:graph"


async def idle_thread(gw: Gateway, **fields: Any) -> str:
    """A thread whose one run of the slow graph (no delay) ended SUCCESS: nothing in flight."""
    run = await gw.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True, **fields))
    assert run.status is RunStatus.SUCCESS
    return run.thread_id


def the_next_end_fails(
    gw: Gateway,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    before: Callable[[str], Awaitable[None]] | None = None,
) -> Callable[[], Awaitable[asyncio.Task[Any]]]:
    """The next run end recorded fails with `error`, once (after `before(run_id)`), and
    no batch of events is stored meanwhile: those after a run's first wait for its end.
    Returns a wait for the task of that run, done."""
    executor, registry = gw.executor, gw.manager.registry
    gw.events.flush_interval = 3600
    finish_run = registry.finish_run
    failed: list[asyncio.Task[Any]] = []
    reached = asyncio.Event()

    async def fail_once(run_id: str, *args: Any, **kw: Any) -> Any:
        monkeypatch.setattr(registry, "finish_run", finish_run)
        failed.append(executor._tasks[run_id])
        if before is not None:
            await before(run_id)
        reached.set()
        raise error

    monkeypatch.setattr(registry, "finish_run", fail_once)

    async def ended() -> asyncio.Task[Any]:
        async with asyncio.timeout(30):
            await reached.wait()
            await asyncio.wait(failed)
        return failed[0]

    return ended


@pytest.fixture
async def gateway(backend_config: CheckpointerConfig) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(checkpointer=backend_config, graphs={"slow": SLOW_SPEC})
    async with Gateway(settings) as gw:
        yield gw
