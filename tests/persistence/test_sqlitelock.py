"""Another process holding the SQLite file's write lock: one write waits the busy
timeout, the ones after it fail at once instead of each waiting its own, reads go on,
and the normal wait is back once a probe gets the lock (persistence.sqlitelock)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import cast

import pytest

from code_hero.persistence.registry import SqliteRegistry
from code_hero.persistence.sqlitelock import BUSY_MS, HELD_BUSY_MS
from tests.persistence.test_down_means_down import _config, _manager, _raw, _stored, _writer


async def _busy_timeout(registry: SqliteRegistry) -> int:
    async with registry.lock, registry.conn.execute("PRAGMA busy_timeout") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_held_file_fails_queued_writes_at_once_and_heals(
    request: pytest.FixtureRequest,
) -> None:
    config = _config("sqlite", request)
    async with _manager(config) as manager:
        backend = manager.router.primary.backend
        assert backend is not None
        registry = cast(SqliteRegistry, backend.registry)
        await _raw(manager, "PRAGMA busy_timeout = 200")  # the first wait, shortened for a test
        write = _writer(manager)
        await write("before")
        with contextlib.closing(
            sqlite3.connect(config.database_path or "", isolation_level=None)
        ) as other:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                await write("first")
            # The file counts as held: the next writes do not wait a full timeout each.
            assert await _busy_timeout(registry) == HELD_BUSY_MS
            queued = await asyncio.gather(
                *(write(f"queued-{i}") for i in range(5)), return_exceptions=True
            )
            assert all(isinstance(r, sqlite3.OperationalError) for r in queued), queued
            assert await manager.get_checkpointer().aget_tuple(
                {"configurable": {"thread_id": "before", "checkpoint_ns": ""}}
            )  # reads go on beside the other process's write (WAL)
            await manager.health_check()  # the probe finds the lock still held
            assert await _busy_timeout(registry) == HELD_BUSY_MS
            other.execute("ROLLBACK")
        assert (await manager.health_check())["overall_status"] == "healthy"
        assert await _busy_timeout(registry) == BUSY_MS
        await write("after")
        assert _stored(config, "after") == 1
        assert manager.router.active == 0 and manager.metrics.fallback_switches == 0


async def test_a_write_that_goes_through_brings_the_normal_wait_back_at_once(
    request: pytest.FixtureRequest,
) -> None:
    # After one write met a held lock, the next writes wait HELD_BUSY_MS only: once
    # the other process let go, a neighbour's short transactions (the CLI's) would
    # fail ours until the next probe. The first write that goes through ends that.
    config = _config("sqlite", request)
    async with _manager(config) as manager:
        backend = manager.router.primary.backend
        assert backend is not None
        registry = cast(SqliteRegistry, backend.registry)
        await _raw(manager, "PRAGMA busy_timeout = 200")
        write = _writer(manager)
        with contextlib.closing(
            sqlite3.connect(config.database_path or "", isolation_level=None)
        ) as other:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                await write("first")
            with pytest.raises(sqlite3.OperationalError):  # a failed write changes nothing
                await write("while-held")
            assert await _busy_timeout(registry) == HELD_BUSY_MS
            other.execute("ROLLBACK")
        await write("after")  # no probe in between
        assert await _busy_timeout(registry) == BUSY_MS
        assert HELD_BUSY_MS >= 200  # a neighbour's short transaction ends within it


async def test_a_lock_a_runs_touch_meets_is_marked_as_the_stores(
    request: pytest.FixtureRequest,
) -> None:
    """A run's checkpoint put touches its thread (`FallbackRouter.touch`, not through
    `fail_if_down`): the lock it meets is the store's, so the executor releases the run
    to resume rather than ending it ERROR as a node's own lock."""
    from code_hero.persistence.contention import contention, from_store

    config = _config("sqlite", request)
    async with _manager(config) as manager:
        await _raw(manager, "PRAGMA busy_timeout = 200")
        with contextlib.closing(
            sqlite3.connect(config.database_path or "", isolation_level=None)
        ) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(Exception) as met:
                await manager.router.touch("th-locked", None, create=False)
            other.execute("ROLLBACK")
        assert contention(met.value) is not None
        assert from_store(met.value)
