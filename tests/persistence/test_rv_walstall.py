"""Review of the journal file's off-loop WAL checkpoints (branch walstall): defects found."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import empty_checkpoint

from code_hero.persistence.entries import PutCheckpoint
from code_hero.persistence.outagefile import OutageFile, _flock
from code_hero.persistence.walcheckpoints import WalCheckpointer

DB = "postgresql://db"
OTHER = "postgresql://other"


def _checkpoint(thread_id: str, n: int, size: int = 100_000) -> PutCheckpoint:
    checkpoint = empty_checkpoint()
    checkpoint["id"] = f"{n:032d}"
    checkpoint["channel_values"] = {"blob": os.urandom(size)}
    config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    return PutCheckpoint(config, checkpoint, {}, {})  # type: ignore[typeddict-item]


def test_a_reader_beside_the_server_never_makes_the_loops_commits_fail(tmp_path: Path) -> None:
    """The README says `sqlite3` may read the entries file beside the server. A reader's
    open transaction pins the WAL: it grows past the checkpointer's limit, and its
    TRUNCATE takes the writers' lock, then waits up to its busy timeout (30 s) for the
    reader while holding it. Each commit on the event loop then blocks the loop for the
    loop's busy timeout (5 s) and fails ("database is locked"): the entry is not filed,
    and the next one blocks the loop again, for as long as the reader stays."""
    journal_file = tmp_path / "fb.sqlite.entries"
    store = OutageFile.claim(str(tmp_path / "fb.sqlite"), DB)
    store.checkpoints.close()
    # The same checkpointer, its limit scaled down to what a test writes.
    store.checkpoints = WalCheckpointer(
        journal_file, every_bytes=256_000, interval=0.05, limit=2_000_000
    )
    reader = sqlite3.connect(journal_file, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM entries").fetchall()  # a snapshot, held
        for n in range(30):  # 3 MB: the WAL passes the limit (the reader pins it)
            store.add(_checkpoint("t", n))
        assert (tmp_path / "fb.sqlite.entries-wal").stat().st_size > 2_000_000
        begun = store.checkpoints.passes
        for n in range(30, 60):  # the checkpointer wakes meanwhile (each 0.05 s)
            store.add(_checkpoint("t", n))  # bug: OperationalError, database is locked
            time.sleep(0.05)
        assert store.checkpoints.passes > begun  # it did run meanwhile
    finally:
        reader.rollback()
        reader.close()
        store.close()


def test_a_claim_that_fails_after_taking_the_lock_lets_it_go(tmp_path: Path) -> None:
    """`claim` takes the file's flock and starts its checkpointer before it reads and
    resets the file; an error there (a full disk, an I/O error: here a trigger refuses
    the reset's insert) propagated with neither released: the descriptor is a bare int
    nothing closes (the SQLite exclusive lock it replaced went with the connection's
    garbage collection), so the file stays locked for the rest of the process (serve's
    check falls back to memory and serves on), and a checkpointer thread is left."""
    path = str(tmp_path / "fb.sqlite")
    journal_file = tmp_path / "fb.sqlite.entries"
    OutageFile.claim(path, OTHER).close()
    with sqlite3.connect(journal_file) as conn:
        conn.execute(
            "CREATE TRIGGER full BEFORE INSERT ON state "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    before = {t for t in threading.enumerate() if t.name.startswith("wal-checkpoint")}
    try:
        OutageFile.claim(path, DB)  # another database's file, empty: reset
    except sqlite3.Error:
        pass
    else:
        raise AssertionError("the trigger did not refuse the reset")
    left = {t for t in threading.enumerate() if t.name.startswith("wal-checkpoint")} - before
    lock = _flock(tmp_path / "fb.sqlite.entries-lock")
    assert lock is not None, "the failed claim still holds the file's lock"
    os.close(lock)
    assert not left, "the failed claim left its checkpointer running"


def test_a_checkpoint_failing_otherwise_than_sqlite_leaves_the_thread_alive_and_logs_once(
    tmp_path: Path, monkeypatch: Any, caplog: Any
) -> None:
    """Only `sqlite3.Error` was caught: a `PermissionError` from `os.stat` of the WAL
    ended the thread for good, and with automatic checkpoints off the WAL then grew
    without end; a checkpoint failing each second logged a WARNING each second."""
    journal_file = tmp_path / "fb.sqlite.entries"
    store = OutageFile.claim(str(tmp_path / "fb.sqlite"), DB)
    store.checkpoints.close()
    checkpoints = WalCheckpointer(journal_file, every_bytes=1, interval=0.02)
    store.checkpoints = checkpoints
    failures = 5
    real = WalCheckpointer._checkpoint

    def flaky(self: WalCheckpointer, conn: sqlite3.Connection) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise PermissionError("stat: permission denied")
        real(self, conn)

    monkeypatch.setattr(WalCheckpointer, "_checkpoint", flaky)
    try:
        with caplog.at_level("INFO", logger="code_hero.persistence.walcheckpoints"):
            store.add(_checkpoint("t", 0, size=1000))
            for _ in range(500):
                if not failures and checkpoints.passes:
                    break
                time.sleep(0.02)
            assert checkpoints.passes, "no checkpoint ran after the failures"
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert any("checkpointed again" in r.getMessage() for r in caplog.records)
    finally:
        store.close()
