"""Registry calls cancelled mid-statement leave the connection clean."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from code_hero.persistence.records import Registry, ThreadRecord, ThreadStatus


async def test_a_cancelled_call_leaves_no_transaction_behind(registry: Registry) -> None:
    # A cancelled coroutine does not stop the statement it sent (aiosqlite runs it on
    # its own thread). The next session used to start while that statement was still
    # pending and meet the transaction it opened: "cannot start a transaction within
    # a transaction".
    now = datetime.now(UTC)
    for round_ in range(40):
        cancelled = asyncio.create_task(registry.touch_threads({f"gone{round_}": None}))
        for _ in range(round_ % 8):
            await asyncio.sleep(0)
        cancelled.cancel()
        thread = ThreadRecord(f"t{round_}", None, ThreadStatus.IDLE, {}, now, now)
        following = asyncio.create_task(registry.touch_threads({thread.thread_id: "u"}))
        results = await asyncio.gather(cancelled, following, return_exceptions=True)
        assert not isinstance(results[1], BaseException), results[1]
        assert await registry.get_thread(thread.thread_id) is not None
