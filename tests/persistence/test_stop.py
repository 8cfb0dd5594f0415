"""Stopping the health probe: a stop that an await drops still ends it.

On Python 3.11 `asyncio.wait_for` (psycopg_pool's getconn waits for a
connection with it) returns a result that arrives together with a cancel and
drops the cancel. The tests make that happen: the awaited event is set and the
stop comes in the same turn of the loop.
"""

from __future__ import annotations

import asyncio

from code_hero.checkpointing import EnhancedCheckpointerManager, create_memory_checkpointer


async def test_the_health_probe_ends_when_its_stop_is_dropped() -> None:
    manager = EnhancedCheckpointerManager(create_memory_checkpointer(health_check_interval=0.01))
    await manager.initialize()
    probing, go, carried_on = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def check() -> None:
        if probing.is_set():
            carried_on.set()  # probed again after the stop: the stop was lost
            return
        probing.set()
        await asyncio.wait_for(go.wait(), 60)  # as getconn waits for a connection

    manager.router.check = check  # type: ignore[method-assign]
    await probing.wait()
    go.set()
    cleanup = asyncio.ensure_future(manager.cleanup())  # cancels as the connection comes
    lost = asyncio.ensure_future(carried_on.wait())
    await asyncio.wait([cleanup, lost], return_when=asyncio.FIRST_COMPLETED)
    lost.cancel()
    assert cleanup.done() and not carried_on.is_set()
    await cleanup
