"""A checkpoint write cancelled while the fallback stores it is copied back all the same.

In an outage a run's checkpoint goes to the fallback (a SQLite file, written by
aiosqlite's worker thread) and then into the journal that the copy-back replays.
A cancel that lands while the worker thread writes (a run cancelled in its first
moments: `cancelRun`, a deleted thread's runs, a client gone) stops the caller, not
the thread: the checkpoint is in the fallback, and readers saw it (the run's
`CheckpointSaved` event, the thread's history), but its journal entry was never
appended, so PostgreSQL never got it (found by the audit, 2026-11-30: 6 to 13 of 60
runs cancelled in their first 50 ms of an outage).

On a PostgreSQL cluster of the test's own, stopped by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.config import create_postgres_checkpointer
from code_hero.persistence.manager import EnhancedCheckpointerManager
from tests.replicas.test_durable_fallback import OwnPostgres, own_pg

pytestmark = pytest.mark.postgres

__all__ = ["own_pg"]

STEPS = 60


def _config(thread: str) -> Any:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}


async def test_a_write_cancelled_while_the_fallback_stores_it_reaches_the_database(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    config = create_postgres_checkpointer(
        own_pg.url, fallback_path=str(tmp_path / "fb.sqlite"), health_check_interval=0.2
    )
    async with EnhancedCheckpointerManager(config) as manager:
        saver = manager.get_checkpointer()
        fallback = manager.router.slots[1]  # the SQLite file the outage writes to
        own_pg.stop()
        while manager.overall_status == "healthy":
            await manager.probe_health()
            await asyncio.sleep(0.1)
        stored: dict[str, str] = {}  # thread -> the checkpoint the fallback holds
        for n in range(STEPS):
            thread = f"cancelled-after-{n}"
            checkpoint = empty_checkpoint()
            put = asyncio.ensure_future(saver.aput(_config(thread), checkpoint, {}, {}))
            for _ in range(n):
                await asyncio.sleep(0)
            put.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await put
            assert fallback.backend is not None and manager.router.active_slot is fallback
            found = await fallback.backend.saver.aget_tuple(_config(thread))
            if found is not None:
                stored[thread] = found.checkpoint["id"]
        assert stored  # some writes were stored before or despite their cancel
        own_pg.start()
        while manager.overall_status != "healthy" or manager.pending_sync:
            await manager.probe_health()
            await asyncio.sleep(0.1)
    rows = own_pg.rows("SELECT thread_id, checkpoint_id FROM checkpoints")
    in_postgres = dict(rows)
    lost = {t: c for t, c in stored.items() if in_postgres.get(t) != c}
    assert not lost, f"{len(lost)} of {len(stored)} stored on the fallback: {sorted(lost)}"
