"""The SQLite file commits without an fsync each only under WAL (README, Durability on SQLite)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from code_hero.config import create_sqlite_checkpointer
from code_hero.persistence.backends import SqliteBackend

NORMAL, FULL = 1, 2


async def pragma(backend: SqliteBackend, name: str) -> str:
    async with backend._conn.execute(f"PRAGMA {name}") as cur:
        row = await cur.fetchone()
    assert row is not None
    return str(row[0]).lower()


async def test_wal_commits_without_fsync_each(tmp_path: Path) -> None:
    backend = SqliteBackend(create_sqlite_checkpointer(str(tmp_path / "cp.sqlite")))
    await backend.open()
    try:
        assert await pragma(backend, "journal_mode") == "wal"
        assert await pragma(backend, "synchronous") == str(NORMAL)
    finally:
        await backend.close()


async def test_without_wal_every_commit_is_synced(tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite"
    async with aiosqlite.connect(str(path)) as conn:  # a file someone keeps in DELETE mode
        await conn.execute("PRAGMA journal_mode = DELETE")
    backend = SqliteBackend(create_sqlite_checkpointer(str(path), auto_setup=False))
    await backend.open()
    try:
        assert await pragma(backend, "journal_mode") == "delete"
        assert await pragma(backend, "synchronous") == str(FULL)
    finally:
        await backend.close()


async def test_a_write_another_process_holds_off_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    """The backend's own deletes (keepLatest, a thread's checkpoints) found the file locked
    by another process (the CLI, a second server): before, the implicit transaction the
    DELETE opened stayed open, and the next statement on the connection (a run's
    checkpoint, a deletion) ran inside it."""
    path = str(tmp_path / "cp.sqlite")
    backend = SqliteBackend(create_sqlite_checkpointer(path))
    await backend.open()
    try:
        await backend._conn.execute("PRAGMA busy_timeout = 50")
        async with aiosqlite.connect(path) as other:
            await other.execute("BEGIN IMMEDIATE")  # another process writes
            for delete in (backend.keep_latest("t", 1), backend.delete_checkpoints("t")):
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    await delete
                assert not backend._conn.in_transaction
            await other.rollback()
        assert await backend.keep_latest("t", 1) == 0  # and the file is usable after
    finally:
        await backend.close()


async def test_the_page_cache_is_the_configured_size(tmp_path: Path) -> None:
    # 512 KiB unless configured (SQLite's own default, 2,000 KiB, held ~1.5 MiB more
    # resident after bench/peer.py's workload); a negative cache_size counts KiB.
    for config, kib in [
        (create_sqlite_checkpointer(str(tmp_path / "a.sqlite")), 512),
        (create_sqlite_checkpointer(str(tmp_path / "b.sqlite"), sqlite_cache_kib=4096), 4096),
    ]:
        backend = SqliteBackend(config)
        await backend.open()
        try:
            assert await pragma(backend, "cache_size") == str(-kib)
        finally:
            await backend.close()
