"""The lock of the one SQLite connection, which stops its queue waiting on a locked file.

Every statement on the connection runs under one asyncio lock. While another
process holds the file's write lock (the `sqlite3` shell, a second server), a
write waits `busy_timeout` (5 s) and fails with SQLITE_BUSY; every caller
queued behind it then waited its own 5 s in turn: 12 concurrent requests
answered after 5 to 40 s (measured), more callers, longer.

Once a statement under this lock has failed BUSY, the file counts as held
elsewhere: the connection's busy timeout drops to `HELD_BUSY_MS`, so a write
fails soon (UNAVAILABLE, retryAfter 1: `contention`) and a read, which a
WAL file serves beside another process's write, goes on as before. Soon, not
at once: a neighbour's short transactions (the CLI's, after one long one) end
within it, and a write behind one of them still succeeds. The normal busy
timeout is back as soon as a write goes through (the lock was free then), or
when the probe (`release_if_free`), which takes the write lock for a moment at
each health check, gets it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from types import TracebackType

import aiosqlite

from code_hero.persistence.contention import SQLITE_LOCK_CODES

__all__ = ["BUSY_MS", "HELD_BUSY_MS", "ConnectionLock"]

BUSY_MS = 5000  # the busy timeout: another process may hold the file briefly
HELD_BUSY_MS = 500  # while it has been holding it past BUSY_MS


def _is_busy(exc: object) -> bool:
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    return code is not None and code & 0xFF in SQLITE_LOCK_CODES


class ConnectionLock(asyncio.Lock):
    """The connection's asyncio lock, which shortens the busy wait while the file is held."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        super().__init__()
        self._conn = conn
        self.held_elsewhere = False
        self._changes = 0  # the connection's total_changes when the file became held

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.saw(exc)
        finally:
            self.release()

    async def saw(self, outcome: object) -> None:
        """A statement under this lock (held by the caller) ended with `outcome` (an
        exception, or anything else for a success)."""
        if _is_busy(outcome):
            if not self.held_elsewhere:
                self.held_elsewhere = True
                self._changes = self._conn.total_changes
                await self._conn.execute(f"PRAGMA busy_timeout = {HELD_BUSY_MS}")
        elif (
            self.held_elsewhere
            and not isinstance(outcome, BaseException)
            and self._conn.total_changes != self._changes
        ):
            await self._free()  # a write went through: nobody holds the lock now

    async def _free(self) -> None:
        await self._conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        self.held_elsewhere = False

    async def release_if_free(self) -> None:
        """While the file counts as held elsewhere, try its write lock (without the
        caller holding this one); got, the normal busy timeout is back."""
        if not self.held_elsewhere:
            return
        async with self:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    return  # still held: the file answered, which is all a probe asks
                raise
            await self._conn.execute("ROLLBACK")
            await self._free()
