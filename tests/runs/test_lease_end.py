"""A run whose end is committed while its lease is renewed is not 'lost'."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import StartRun
from tests.runs.conftest import SLOW_SPEC


async def test_renewal_during_the_end_does_not_take_the_run_for_lost(
    backend_config: CheckpointerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    # Leases renewed every 0.1 s; the end, once committed, is held for 0.5 s before the
    # task lets go of the run: renewals find the row ended while the task still runs.
    settings = GatewaySettings(
        checkpointer=backend_config, graphs={"slow": SLOW_SPEC}, lease_seconds=0.3
    )
    async with Gateway(settings) as gw:
        registry = gw.manager.registry
        finish_run = registry.finish_run

        async def slow_finish(*args: Any, **kwargs: Any) -> Any:
            result = await finish_run(*args, **kwargs)
            await asyncio.sleep(0.5)
            return result

        registry.finish_run = slow_finish  # type: ignore[method-assign]
        caplog.set_level(logging.WARNING, logger="code_hero")
        run = await gw.start_run(StartRun(graph="slow", input={"delay": 0.0}))
        final = await gw.executor.wait(run.run_id, 10)
    assert final.status is RunStatus.SUCCESS
    assert "lost the lease" not in caplog.text
