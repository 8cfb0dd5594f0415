"""What an outage is judged by: stalls of this process (gaps in the loop's own clock)
and the primary's last answer."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from langgraph.checkpoint.base import empty_checkpoint

from code_hero.checkpointing import EnhancedCheckpointerManager
from code_hero.config import create_sqlite_checkpointer
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


async def test_the_primary_answers_at_every_call_not_only_at_its_probe(sqlite_path: str) -> None:
    # An outage counts from the primary's last answer (`FallbackRouter.outage_began`);
    # from the last probe alone, up to a health interval old, a lease that lapsed after
    # a later answer (a run whose renewals the pool refused as busy, taken over) was
    # judged one that lapsed in the outage: renewed or ended here (review).
    config = create_sqlite_checkpointer(sqlite_path, health_check_interval=3600)
    async with EnhancedCheckpointerManager(config) as manager:
        slot = manager.router.primary
        probed = slot.answered_at
        assert probed is not None
        await manager.registry.get_thread("t")  # a registry read
        read = slot.answered_at
        assert read is not None and read > probed
        await manager.get_checkpointer().aput(  # a checkpoint write
            {"configurable": {"thread_id": "t", "checkpoint_ns": ""}},
            empty_checkpoint(),
            {"source": "input", "step": -1, "parents": {}},
            {},
        )
        written = slot.answered_at
        assert written is not None and written > read
