"""Checkpoints of the journal's WAL, off the event loop.

The durable fallback's journal (`outagefile.py`) commits each entry on the event
loop. SQLite's automatic checkpoint (every 1,000 pages of WAL) runs inside the
commit that passes that size: it copies the WAL's pages into the database file and
syncs it, on the loop. With large checkpoints (100 kB each, 300 a second) that
stalled the loop 10-30 ms at p99 (bench/walstall.py).

So the loop's connection turns the automatic checkpoint off, and a
`WalCheckpointer` checkpoints from a thread of its own, on a connection of its
own: PASSIVE (it never takes the writers' lock, so a commit on the loop never
waits for it), once `every_bytes` went in since the last one or every `interval`
seconds when anything did. A checkpoint copies what the WAL holds at its start;
what commits meanwhile is copied by the next pass, right after it, so the WAL is
soon wholly in the database file and the next commit starts it over from its
beginning (passes that never catch up, commits all along, go on at once): the WAL
stays a few times `every_bytes` long (8-21 MB in bench/walstall.py on a loaded
machine). Should it pass `limit` all the same, a TRUNCATE checkpoint empties it once
the passes left little to copy (at most `_CUT_BACKLOG` pages: it holds the writers'
lock for a moment), and so does one asked for by `cut` (the disk given back after an
outage). It never waits for a lock (busy timeout 0): a reader's open transaction
beside the server (a `sqlite3` shell) pins the WAL, and a TRUNCATE that waited for it
would hold the writers' lock meanwhile, the loop's commits failing behind it. So a
WAL pinned by a reader grows (one WARNING) until that ends; a busy cut is tried again
at the next pass.

Crash safety is the WAL's: an entry is acknowledged once its commit is in the WAL
(synchronous = NORMAL), a checkpoint only copies committed pages into the database
file, and the WAL is reused only once they all are.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

__all__ = ["WalCheckpointer"]

log = logging.getLogger(__name__)

EVERY_BYTES = 4 * 1024 * 1024  # SQLite's own automatic checkpoint: 1,000 4 kB pages
INTERVAL = 1.0  # seconds: what went in is in the database file at most this late
LIMIT = 64 * 1024 * 1024  # a WAL past it is cut back once the passes caught up
_PASSES = 8  # PASSIVE passes in a row to catch up with the commits made meanwhile
# WAL frames (4 kB pages) a TRUNCATE may still have to copy, holding the writers' lock:
# under steady commits the passes never quite catch up, and waiting for that let the
# WAL pass its limit many times over (120-160 MB for 16 MB at 3,000 commits/s).
_CUT_BACKLOG = 256


class WalCheckpointer:
    """Checkpoints a WAL database from a thread of its own, on a connection of its own."""

    def __init__(
        self,
        database: Path,
        *,
        every_bytes: int = EVERY_BYTES,
        interval: float = INTERVAL,
        limit: int = LIMIT,
    ) -> None:
        self.database = database
        self.wal = database.with_name(database.name + "-wal")
        self.every_bytes = every_bytes
        self.interval = interval
        self.limit = limit
        self.passes = 0  # checkpoints run so far (tests, diagnosis)
        self.thread_ids: set[int] = set()  # the threads they ran on
        self._written = 0  # bytes committed since the last checkpoint (approximate)
        self._running = False
        self._wake = threading.Event()
        self._stopping = False
        self._failing = False  # a checkpoint failed and none worked since (logged once)
        self._pinned = False  # a reader keeps the WAL from being cut (logged once)
        self._cut = False  # a cut is asked for (`cut`), tried until it is done
        self._thread = threading.Thread(
            target=self._run, name=f"wal-checkpoint {database.name}", daemon=True
        )
        self._thread.start()

    def wrote(self, size: int) -> None:
        """A commit of about `size` bytes went in (called on the loop: no I/O, a lock-free
        count; a lost update only delays a checkpoint to the next interval)."""
        self._written += size
        if self._written >= self.every_bytes:
            self._wake.set()

    @property
    def idle(self) -> bool:
        """No checkpoint under way and nothing committed since the last one began: what
        was committed is in the database file (the next commit starts the WAL over)."""
        return not self._running and not self._written

    def close(self) -> None:
        """Stop checkpointing (the last connection's close checkpoints what is left)."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait(self.interval)
                self._wake.clear()
                if self._stopping:
                    return
                if not self._written and not self._cut:
                    continue
                self._running = True
                self._written = 0
                try:
                    if conn is None:  # busy timeout 0: a checkpoint never waits for a lock
                        conn = sqlite3.connect(self.database, timeout=0, isolation_level=None)
                    self._checkpoint(conn)
                except Exception as exc:  # the thread must live: the next one tries again
                    self._failed(exc)
                    self._written += 1
                else:
                    if self._failing:
                        self._failing = False
                        log.info("the journal's WAL %s is checkpointed again", self.wal)
                finally:
                    self._running = False
        finally:
            if conn is not None:
                conn.close()

    def _failed(self, exc: BaseException) -> None:
        """Log a failing checkpoint once until one works again (a full disk would log it
        at every interval)."""
        if not self._failing:
            self._failing = True
            log.warning(
                "checkpointing the journal's WAL %s failed (%s): it grows until a checkpoint "
                "works again, tried each second",
                self.wal,
                exc,
            )

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """PASSIVE passes until the WAL is wholly in the database file; then, past the
        limit or asked to (`cut`), a TRUNCATE one once little or nothing is left to copy."""
        self.thread_ids.add(threading.get_ident())
        before = -1
        caught_up = busy = False
        backlog = 0
        for _ in range(_PASSES):
            # `frames`: the WAL's as the pass began; a commit meanwhile added more, for the
            # next pass. Caught up once a pass finds none added since the one before.
            busy_pass, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.passes += 1
            if busy_pass or frames < 0:  # another connection's checkpoint: next interval
                busy = True
                break
            backlog = frames - copied
            if frames == before or self._stopping:
                caught_up = frames == before
                break
            before = frames
        if busy:
            self._written += 1
        elif not caught_up:  # commits all along: again at once, not 4 MB later
            self._written += 1
            self._wake.set()
        if self._stopping or not (self._cut or _size(self.wal) > self.limit):
            self._pinned = False
            return
        cut = 1
        if not busy and (caught_up or backlog <= _CUT_BACKLOG):  # little left to copy
            wanted, self._cut = self._cut, False  # a `cut()` from now on is another
            try:
                cut, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                self.passes += 1
                if cut:
                    self._cut = self._cut or wanted
        if not cut:
            self._pinned = False
            return
        self._written += 1  # tried again: at the next interval, or at once (above)
        if caught_up and not self._pinned and not _writing(conn):  # a reader holds it
            self._pinned = True
            log.warning(
                "the journal's WAL %s cannot be cut back yet (%d MB): a reader holds a "
                "transaction open on the file (a sqlite3 shell?); it grows until that ends",
                self.wal,
                _size(self.wal) // 1_000_000,
            )

    def cut(self) -> None:
        """Truncate the WAL soon, on this thread (the disk an outage used, given back once
        the file is emptied), tried each interval until it is done: on the connection of
        its own, it waits for no reader and holds no commit of the loop up."""
        self._cut = True
        self._wake.set()


def _writing(conn: sqlite3.Connection) -> bool:
    """Whether a writer holds the database's write lock now (a commit of the loop under
    way also makes a cut busy, and is no reader to warn of)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:  # busy: a writer has it
        return True
    conn.execute("ROLLBACK")
    return False


def _size(file: Path) -> int:
    try:
        return os.stat(file).st_size
    except FileNotFoundError:
        return 0
