from __future__ import annotations

import asyncio
from pathlib import Path

from code_hero.config import CheckpointerConfig
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import StartRun

SPEC = f"{Path(__file__).with_name('nul_raise_graph.py')}:graph"


async def test_a_node_raising_a_nul_ends_its_run(backend_config: CheckpointerConfig) -> None:
    settings = GatewaySettings(checkpointer=backend_config, graphs={"bad": SPEC})
    async with Gateway(settings) as gw:
        start = gw.start_run(StartRun(graph="bad", input={}, wait=True))
        run = await asyncio.wait_for(start, 15)
        print(run.status, repr(run.error), run.steps)
        assert run.status is RunStatus.ERROR
