"""A Gateway on each backend, with the slow test graph loaded by path."""

from __future__ import annotations

from collections.abc import AsyncIterator
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


@pytest.fixture
async def gateway(backend_config: CheckpointerConfig) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(checkpointer=backend_config, graphs={"slow": SLOW_SPEC})
    async with Gateway(settings) as gw:
        yield gw
