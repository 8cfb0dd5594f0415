"""The SQLite file commits without an fsync each only under WAL (README, Durability on SQLite)."""

from __future__ import annotations

from pathlib import Path

import aiosqlite

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
