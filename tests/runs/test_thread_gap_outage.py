"""Review rv-tgap: a gap in an outage on a thread from before it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from code_hero.runs.executor import StartRun
from tests.faults import until
from tests.graphql.clients import eventually
from tests.persistence.proxied import behind_a_proxy, degraded, synced

pytestmark = pytest.mark.postgres


async def test_an_idle_subscriber_of_an_old_thread_survives_a_poke_in_an_outage(
    pg_database: str,
) -> None:
    """The listener's reconnect poke comes before the router is back on PostgreSQL:
    a subscriber with nothing to catch up must not be ended with UNAVAILABLE."""
    async with behind_a_proxy(pg_database) as (gw, proxy):
        old = await gw.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
        stream = await gw.follow_thread(old.thread_id)
        nxt = asyncio.create_task(anext(stream))
        await eventually(lambda: gw.bus.subscriber_count == 1)
        proxy.refuse()
        await until(lambda: degraded(gw))
        gw.bus.poke_all()  # as the PostgreSQL bus's listener does on reconnecting
        await asyncio.sleep(0.5)
        try:
            assert not nxt.done(), nxt.exception() if nxt.done() else None
        finally:
            nxt.cancel()
            with contextlib.suppress(BaseException):
                await nxt
            await stream.aclose()
            proxy.forward()
            await until(lambda: synced(gw))
