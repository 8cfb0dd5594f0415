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
machine). Should it pass `limit` all the same (a disk slower than the writes), a
TRUNCATE checkpoint empties it, and the loop's commits wait for that one (its busy
timeout): the bound.

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
LIMIT = 64 * 1024 * 1024  # a WAL past it is emptied, the writers waiting for it
_PASSES = 8  # PASSIVE passes in a row to catch up with the commits made meanwhile


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
        try:
            conn = sqlite3.connect(self.database, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            log.warning("the journal's WAL checkpoints could not start (%s)", exc)
            return
        try:
            while True:
                self._wake.wait(self.interval)
                self._wake.clear()
                if self._stopping:
                    return
                if not self._written:
                    continue
                self._running = True
                self._written = 0
                try:
                    self._checkpoint(conn)
                except sqlite3.Error as exc:  # the next one tries again
                    log.warning("checkpointing the journal's WAL %s failed: %s", self.wal, exc)
                    self._written += 1
                finally:
                    self._running = False
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """PASSIVE passes until the WAL is wholly in the database file; a TRUNCATE one when
        it is past the limit all the same."""
        self.thread_ids.add(threading.get_ident())
        before = -1
        for _ in range(_PASSES):
            # `frames`: the WAL's as the pass began; a commit meanwhile added more, for the
            # next pass. Caught up once a pass finds none added since the one before.
            _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.passes += 1
            if frames == before or self._stopping:
                break
            before = frames
        else:  # not caught up (commits all along): again at once, not 4 MB later
            self._written += 1
            self._wake.set()
        if _size(self.wal) > self.limit:
            log.warning(
                "the journal's WAL %s passed %d MB (the disk is slower than the outage's "
                "writes): emptied now, the writes wait for it",
                self.wal,
                self.limit // 1_000_000,
            )
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.passes += 1


def _size(file: Path) -> int:
    try:
        return os.stat(file).st_size
    except FileNotFoundError:
        return 0
