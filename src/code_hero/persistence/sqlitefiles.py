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
    another file at the      not served: it may be a restore, or a new empty
    database's path          file that anything opening the path made (the
                             sqlite3 shell, a CLI command, a restart); taken
                             for a restore, it would hide all the data.  The
                             connection is kept (`DatabaseFileTaken`: the
                             server stays degraded and an administrator
                             decides); its old WAL and index are removed from
                             beside the newcomer. At shutdown the open data is
                             saved beside it (`.orphaned-<time>`)
    WAL or index moved       the WAL is checkpointed into the database file, which
                             the path still names; then reopened with new ones

Nor while another process has the moved files open too (a CLI command beside
the server, a second server: `others_use`): copied back or reopened, this
process would leave it on the old files, and what it writes after would be
in neither (`DatabaseFileShared`, the server stays degraded until it is alone).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

__all__ = ["DatabaseFileMoved", "DatabaseFileShared", "DatabaseFileTaken", "SqliteFiles"]

log = logging.getLogger(__name__)

_SIDE_FILES = ("-wal", "-shm")


class DatabaseFileMoved(OSError):
    """A file of the open SQLite database was deleted or replaced at its path."""


class DatabaseFileTaken(OSError):
    """Another file is at the path of the open database, which was deleted or replaced."""


class DatabaseFileShared(OSError):
    """The moved files of the open database are open in another process too."""


# SQLite's locks (os_unix.c): every connection to a WAL database holds a shared lock
# on the database file's SHARED range while it is open, and one on the index's DMS
# byte; a process sees the others' with F_GETLK (never its own).
_DB_LOCKS = (0x40000000, 2 + 510)  # PENDING_BYTE, RESERVED_BYTE, SHARED_FIRST..+510
_SHM_LOCKS = (120, 9)  # the index's eight lock bytes and its DMS byte
_FLOCK = {"linux": "hhqqi4x"}.get(sys.platform)  # struct flock's layout


def _locked_by_others(fd: int, start: int, length: int) -> bool:
    assert _FLOCK is not None
    query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
    kind = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))[0]
    return bool(kind != fcntl.F_UNLCK)


# The databases this process's `SqliteFiles` have open, by identity, and how many
# each: F_GETLK does not show a process its own locks, so two connections of one
# process on one file (two managers) would not see each other.
_HERE: Counter[tuple[int, int]] = Counter()


def others_use(opened: dict[str, tuple[int, int]]) -> bool | None:
    """Whether another process (or another connection of this one) has the database or
    index with these identities open (holds SQLite's locks on them); None when this
    platform cannot tell (no /proc, or no descriptor of this process on them)."""
    if "" in opened and _HERE[opened[""]] > 1:
        return True
    if _FLOCK is None or not os.path.isdir("/proc/self/fd"):
        return None
    ranges = {opened[s]: r for s, r in (("", _DB_LOCKS), ("-shm", _SHM_LOCKS)) if s in opened}
    looked = False
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")  # the file, deleted or not, as SQLite has it
            found = ranges.get((st.st_dev, st.st_ino))
            if found is None:
                continue
            looked = True
            if _locked_by_others(int(name), *found):
                return True
        except OSError:  # a descriptor closed meanwhile, or no file
            continue
    return False if looked else None


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
    _counted: tuple[int, int] | None = field(default=None, repr=False)

    def record(self) -> None:
        """Remember the files as they are now (right after the connection opened them)."""
        self.forget()
        self.opened = {}
        for suffix in ("", *_SIDE_FILES):
            identity = _identity(self.path + suffix)
            if identity is not None:
                self.opened[suffix] = identity
        self._counted = self.opened.get("")
        if self._counted is not None:
            _HERE[self._counted] += 1

    def forget(self) -> None:
        """The connection is closed: its database is no longer open here."""
        if self._counted is not None:
            _HERE[self._counted] -= 1
            if _HERE[self._counted] <= 0:
                del _HERE[self._counted]
            self._counted = None

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

    async def rescue(self, conn: aiosqlite.Connection, *, closing: bool = False) -> None:
        """Save what only `conn` still holds before it closes (see the module's table).

        Raises when it cannot (the folder gone too: an unmounted disk), when another
        file is at the path, or when another process uses the moved files: the
        connection must then stay open, the only way left to what it holds. With
        `closing` (the server stops: the last chance) it saves a copy whatever comes."""
        moved = self.moved()
        if not moved:
            return
        await self._save(conn, moved, closing=closing)
        self.opened = {}  # saved: nothing left that only this connection holds

    async def _save(self, conn: aiosqlite.Connection, moved: list[str], *, closing: bool) -> None:
        shared = others_use(self.opened)
        if "" not in moved:
            if shared and not closing:  # its close checkpoints with the others, as ever
                raise self._shared()
            # The database file is still the one at the path: its WAL's frames go into it.
            await conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")  # no cursor left open
            log.warning(
                "SQLite WAL or index of %s was deleted or replaced while open: "
                "checkpointed into the database file, nothing lost; opening new ones",
                self.path,
            )
            return
        taken = _identity(self.path) is not None
        if taken:
            self._unlink_side_files()  # ours, beside a file they do not belong to
            if not closing:
                raise DatabaseFileTaken(
                    f"SQLite file {self.path} was deleted or replaced while the server "
                    "had it open, and another file is at its path now (a restore, or a "
                    "new empty database that something opening the path made): the "
                    "server keeps the data it had open and serves nothing from the new "
                    f"file. To keep the server's data, move {self.path} away: the next "
                    "health check writes the data back there. To serve the new file, "
                    "restart the server: the data it had open is then saved beside it as "
                    f"{self.path}.orphaned-<time>"
                )
        elif shared and not closing:
            raise self._shared()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = f"{self.path}.orphaned-{stamp}" if taken or shared else self.path
        if target == self.path:
            # Before the copy goes in: a process opening the path in between would
            # replay our WAL onto the copy, whose pages lie elsewhere.
            self._unlink_side_files()
        await _copy_out(conn, target)
        if target != self.path:
            log.error(
                "SQLite file %s was deleted or replaced while open, and the server stops: "
                "the data it had open is saved as %s",
                self.path,
                target,
            )
        else:
            log.warning(
                "SQLite file %s was deleted while open: written back from the open "
                "connection, nothing lost",
                self.path,
            )

    def _unlink_side_files(self) -> None:
        # SQLite neither checkpoints nor deletes the WAL of a moved database when it
        # closes: left at the path, ours would be replayed into the file there. But a
        # process that opened the path since (a new file in WAL mode) took the -wal and
        # -shm it found there, ours: they are its own now, and unlinked, its writes
        # would be lost and its file damaged. Left, its checkpoint empties them.
        if others_use(self.opened):
            return
        for suffix in _SIDE_FILES:
            if suffix in self.opened and _identity(self.path + suffix) == self.opened[suffix]:
                os.unlink(self.path + suffix)

    def _shared(self) -> DatabaseFileShared:
        return DatabaseFileShared(
            f"SQLite file {self.path} (or its -wal or -shm) was deleted or replaced while "
            "the server had it open, and another process has the old files open too (a "
            "CLI command, another server, the sqlite3 shell): written back or opened "
            "again now, what that process writes after would be lost. The server stays "
            "degraded until it is the only one using them: stop the others"
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
