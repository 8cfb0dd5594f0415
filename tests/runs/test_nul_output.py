"""A graph whose node returns text PostgreSQL cannot store (a NUL): the run still ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import StartRun

NUL_SPEC = f"{Path(__file__).with_name('nul_graph.py')}:graph"


@pytest.fixture
async def gateway(backend_config: CheckpointerConfig) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(checkpointer=backend_config, graphs={"nul": NUL_SPEC})
    async with Gateway(settings) as gw:
        yield gw


async def test_a_run_whose_graph_returns_a_nul_ends(gateway: Gateway) -> None:
    run = await asyncio.wait_for(
        gateway.start_run(StartRun(graph="nul", input={}, wait=True)), 60
    )
    print(run)
    events = await gateway.run_events(run.run_id, first=1000)
    print(events)
    assert run.status.finished
