"""The files of an open SQLite database, and what to do when they move under it.

A connection keeps the database file, its WAL and its shared-memory index open
by descriptor. Deleted or replaced by path (an operator, a clean-up job, a
restore), they live on for this process alone: its writes go on succeeding
into files nobody else sees and that are gone at its next start, and a second
process at the same path works on other files (a fresh WAL beside the old
database: two views of one database). SQLite does not say so on any statement.

`SqliteFiles` remembers which files the connection opened (device and inode)
and `moved()` compares them with the paths: the probe raises
`DatabaseFileMoved`, an OSError, so the backend counts as down, writes go to
the fallback, and the connection is closed and opened again at the path.
Before it closes, `rescue()` saves what only the open connection still holds:

    database deleted         copied back to its path (VACUUM INTO), so nothing
                             it held is lost; then reopened there (its old WAL
                             and index removed: SQLite would replay that WAL
                             into whatever file the path names)
    database replaced        the file put there is the database now (a restore);
                             the old one is copied beside it (`.orphaned-<time>`)
                             for an administrator, and reopened at the path
    WAL or index moved       the WAL is checkpointed into the database file, which
                             the path still names; then reopened with new ones
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

__all__ = ["DatabaseFileMoved", "SqliteFiles"]

log = logging.getLogger(__name__)

_SIDE_FILES = ("-wal", "-shm")


class DatabaseFileMoved(OSError):
    """A file of the open SQLite database was deleted or replaced at its path."""


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


@dataclass
class SqliteFiles:
    """Which files at `path` an open connection has open, by device and inode."""

    path: str
    opened: dict[str, tuple[int, int]] = field(default_factory=dict)

    def record(self) -> None:
        """Remember the files as they are now (right after the connection opened them)."""
        self.opened = {}
        for suffix in ("", *_SIDE_FILES):
            identity = _identity(self.path + suffix)
            if identity is not None:
                self.opened[suffix] = identity

    def moved(self) -> list[str]:
        """The suffixes ("" for the database) of opened files no longer at their path."""
        return [s for s, ident in self.opened.items() if _identity(self.path + s) != ident]

    def check(self) -> None:
        """Raise DatabaseFileMoved when a file the connection has open left its path."""
        moved = self.moved()
        if not moved:
            return
        names = ", ".join(self.path + s for s in moved)
        raise DatabaseFileMoved(
            f"SQLite file deleted or replaced while the server had it open ({names}): "
            "writes go to the fallback until the database is opened again at its path"
        )

    async def rescue(self, conn: aiosqlite.Connection) -> None:
        """Save what only `conn` still holds before it closes (see the module's table).

        Raises when it cannot (the folder gone too: an unmounted disk): the connection
        must then stay open, the only way left to what it holds."""
        moved = self.moved()
        if not moved:
            return
        await self._save(conn, moved)
        self.opened = {}  # saved: nothing left that only this connection holds

    async def _save(self, conn: aiosqlite.Connection, moved: list[str]) -> None:
        if "" in moved:
            replaced = _identity(self.path) is not None
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            target = f"{self.path}.orphaned-{stamp}" if replaced else self.path
            await _copy_out(conn, target)
            # SQLite neither checkpoints nor deletes the WAL of a moved database when
            # it closes: left at the path, ours would be replayed into the file there.
            for suffix in _SIDE_FILES:
                if suffix in self.opened and _identity(self.path + suffix) == self.opened[suffix]:
                    os.unlink(self.path + suffix)
            if replaced:
                log.warning(
                    "SQLite file %s was replaced while open: serving the new file; "
                    "the old one, with the writes made since, is saved as %s",
                    self.path,
                    target,
                )
            else:
                log.warning(
                    "SQLite file %s was deleted while open: written back from the open "
                    "connection, nothing lost",
                    self.path,
                )
            return
        # The database file is still the one at the path: its WAL's frames go into it.
        await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log.warning(
            "SQLite WAL or index of %s was deleted or replaced while open: checkpointed "
            "into the database file, nothing lost; opening new ones",
            self.path,
        )


async def _copy_out(conn: aiosqlite.Connection, target: str) -> None:
    """A complete copy of the database `conn` sees, at `target`, which must not exist:
    written beside it under another name, then linked in (a link never replaces a file
    that appeared at `target` meanwhile)."""
    folder = Path(target).parent
    scratch = folder / f".{Path(target).name}.{os.getpid()}.copy"
    scratch.unlink(missing_ok=True)
    await conn.execute("VACUUM INTO ?", (str(scratch),))
    try:
        os.link(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
