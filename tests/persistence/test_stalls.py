"""The stall watch: gaps in the event loop's own clock, as leases are judged by."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from code_hero.persistence.stalls import StallWatch


async def test_a_blocked_loop_is_a_stall_and_a_running_one_is_not() -> None:
    watch = StallWatch(tick=0.05, tolerance=0.3)
    watch.start()
    try:
        await asyncio.sleep(0.2)  # ticking
        before = datetime.now(UTC)
        time.sleep(1)  # noqa: ASYNC251 - the stall under test: the loop does not run
        inside = datetime.now(UTC) - timedelta(seconds=0.5)
        # Under way: before the watch has ticked again.
        assert watch.covers(inside, began_before=datetime.now(UTC))
        await asyncio.sleep(0.2)  # the watch ticks and records it
        after = datetime.now(UTC)
        assert len(watch.stalls) == 1
        assert watch.covers(inside, began_before=after)
        assert not watch.covers(before - timedelta(seconds=1), began_before=after)
        assert not watch.covers(after, began_before=after)
        # A stall that began after the moment given (an outage found first) does not count.
        assert not watch.covers(inside, began_before=before - timedelta(seconds=1))
    finally:
        await watch.stop()


async def test_a_stopped_watch_judges_by_what_it_recorded() -> None:
    watch = StallWatch(tick=0.05, tolerance=0.3)
    watch.start()
    await asyncio.sleep(0.1)
    await watch.stop()
    time.sleep(0.5)  # noqa: ASYNC251 - not watched: no stall of a process that stopped watching
    assert not watch.covers(datetime.now(UTC) - timedelta(seconds=0.2), datetime.now(UTC))
