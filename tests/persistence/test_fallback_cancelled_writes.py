"""A write cancelled while the fallback stores it is copied back all the same.

In an outage a run's checkpoint goes to the fallback (a SQLite file, written by
aiosqlite's worker thread) and then into the journal that the copy-back replays.
A cancel that lands while the worker thread writes (a run cancelled in its first
moments: `cancelRun`, a deleted thread's runs, a client gone) stops the caller, not
the thread: the checkpoint is in the fallback, and readers saw it (the run's
`CheckpointSaved` event, the thread's history), but its journal entry was never
appended, so PostgreSQL never got it (found by the audit, 2026-11-30: 6 to 13 of 60
runs cancelled in their first 50 ms of an outage). The registry's writes of an
outage (a thread created on the fallback) store on the fallback then journal as
well: a cancel between the two must not leave the thread in the fallback alone.

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
from code_hero.persistence.records import ThreadRecord, ThreadStatus
from code_hero.persistence.registry.dialect import utc_now
from tests.replicas.test_durable_fallback import OwnPostgres, own_cluster, own_pg

pytestmark = pytest.mark.postgres

__all__ = ["own_cluster", "own_pg"]  # the fixtures, used by name below

STEPS = 60


def _config(thread: str) -> Any:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}


def _manager(pg: OwnPostgres, tmp_path: Path) -> EnhancedCheckpointerManager:
    """A manager on `pg` with its fallback file in `tmp_path`, probing every 0.2 s."""
    config = create_postgres_checkpointer(
        pg.url, fallback_path=str(tmp_path / "fb.sqlite"), health_check_interval=0.2
    )
    return EnhancedCheckpointerManager(config)


async def _degrade(manager: EnhancedCheckpointerManager) -> None:
    """Probes until the manager has found the database down."""
    while manager.overall_status == "healthy":
        await manager.probe_health()
        await asyncio.sleep(0.1)


async def _recover(manager: EnhancedCheckpointerManager) -> None:
    """Probes until the database serves again with the outage's writes copied back."""
    while manager.overall_status != "healthy" or manager.pending_sync:
        await manager.probe_health()
        await asyncio.sleep(0.1)


async def test_a_write_cancelled_while_the_fallback_stores_it_reaches_the_database(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    async with _manager(own_pg, tmp_path) as manager:
        saver = manager.get_checkpointer()
        fallback = manager.router.slots[1]  # the SQLite file the outage writes to
        own_pg.stop()
        await _degrade(manager)
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
        await _recover(manager)
    rows = own_pg.rows("SELECT thread_id, checkpoint_id FROM checkpoints")
    in_postgres = dict(rows)
    lost = {t: c for t, c in stored.items() if in_postgres.get(t) != c}
    assert not lost, f"{len(lost)} of {len(stored)} stored on the fallback: {sorted(lost)}"


async def test_a_thread_created_in_an_outage_and_cancelled_while_stored_reaches_the_database(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    async with _manager(own_pg, tmp_path) as manager:
        registry = manager.registry
        fallback = manager.router.slots[1]
        own_pg.stop()
        await _degrade(manager)
        stored: list[str] = []
        for n in range(STEPS):
            now = utc_now()
            thread = ThreadRecord(f"created-{n}", None, ThreadStatus.IDLE, {}, now, now)
            made = asyncio.ensure_future(registry.create_thread(thread, new_thread=True))
            for _ in range(n):
                await asyncio.sleep(0)
            made.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await made
            assert fallback.backend is not None
            if await fallback.backend.registry.get_thread(thread.thread_id) is not None:
                stored.append(thread.thread_id)
        assert stored
        own_pg.start()
        await _recover(manager)
    there = {row[0] for row in own_pg.rows("SELECT thread_id FROM code_hero_threads")}
    lost = [t for t in stored if t not in there]
    assert not lost, f"{len(lost)} of {len(stored)} stored on the fallback: {lost}"
