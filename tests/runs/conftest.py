"""A Gateway on each backend, with the slow test graph loaded by path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.gateway import Gateway, GatewaySettings

SLOW_SPEC = f"{Path(__file__).with_name('slow_graph.py')}:graph"


@pytest.fixture
async def gateway(backend_config: CheckpointerConfig) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(checkpointer=backend_config, graphs={"slow": SLOW_SPEC})
    async with Gateway(settings) as gw:
        yield gw
