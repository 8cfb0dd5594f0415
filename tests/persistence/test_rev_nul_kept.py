from __future__ import annotations

import asyncio

import pytest

from code_hero.gateway import Gateway
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import StartRun
from tests.faults import BlackHoleProxy
from tests.persistence.test_degraded import _outage_begins, _outage_ends, proxied  # noqa: F401

pytestmark = pytest.mark.postgres


async def test_a_deleted_run_of_a_quarantined_thread_comes_back(
    proxied: tuple[Gateway, BlackHoleProxy],  # noqa: F811
) -> None:
    gw, proxy = proxied
    await _outage_begins(gw, proxy)
    run = await asyncio.wait_for(gw.start_run(StartRun(graph="nul", input={}, wait=True)), 60)
    assert run.status is RunStatus.SUCCESS
    await _outage_ends(gw, proxy)
    assert (await gw.health())["quarantined"] == 1
    assert await gw.delete_run(run.run_id)
    print("after delete:", await gw.get_run(run.run_id))
    print("events after delete:", len(await gw.run_events(run.run_id, first=1000)))
    assert await gw.get_run(run.run_id) is None
