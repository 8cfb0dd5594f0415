"""The SQLite backend commits without an fsync each time: WAL with synchronous=NORMAL."""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from code_hero.config import create_sqlite_checkpointer
from code_hero.persistence.backends import SqliteBackend, open_backend


async def _pragma(conn: aiosqlite.Connection, name: str) -> str:
    async with conn.execute(f"PRAGMA {name}") as cur:
        row = await cur.fetchone()
    assert row is not None
    return str(row[0]).lower()


async def test_wal_with_normal_sync(tmp_path: Path) -> None:
    async with open_backend(create_sqlite_checkpointer(str(tmp_path / "g.sqlite"))) as backend:
        assert isinstance(backend, SqliteBackend)
        conn = backend._conn
        assert await _pragma(conn, "journal_mode") == "wal"
        assert await _pragma(conn, "synchronous") == "1"  # NORMAL


async def test_another_journal_mode_keeps_full_sync(tmp_path: Path) -> None:
    """NORMAL is only safe under WAL: a file kept in rollback mode stays FULL."""
    config = create_sqlite_checkpointer(str(tmp_path / "g.sqlite"), auto_setup=False)
    async with open_backend(config) as backend:
        assert isinstance(backend, SqliteBackend)
        assert await _pragma(backend._conn, "journal_mode") == "delete"
        assert await _pragma(backend._conn, "synchronous") == "2"  # FULL, SQLite's default
