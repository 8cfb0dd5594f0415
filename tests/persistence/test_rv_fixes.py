"""Review of the fixes to walstall, adopt and pg16 (f35aae3, e2a3e04, 1de7594): defects
found, each test failing on main."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import sqlite3
import threading
from pathlib import Path
from typing import Any

import psycopg.types.json
import pytest
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.errors import ConfigurationError
from code_hero.persistence.entries import PutCheckpoint
from code_hero.persistence.groupcommit import GroupCommitSaverPool
from code_hero.persistence.outagefile import OutageFile, waiting
from code_hero.persistence.walcheckpoints import WalCheckpointer
from tests.persistence.test_groupcommit import (
    THREADS,
    call,
    grouped,
    threads_entries,
    with_text,
)

__all__ = ["grouped"]  # a fixture, used by name

DB = "postgresql://db"


def _checkpoint(thread_id: str, n: int, size: int = 1000) -> PutCheckpoint:
    checkpoint = empty_checkpoint()
    checkpoint["id"] = f"{n:032d}"
    checkpoint["channel_values"] = {"blob": os.urandom(size)}
    config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    return PutCheckpoint(config, checkpoint, {}, {})  # type: ignore[typeddict-item]


def test_giving_the_space_back_beside_a_reader_leaves_the_cut_to_the_checkpointer(
    tmp_path: Path,
) -> None:
    """`give_back_space` retried its TRUNCATE while it answered busy, 50 times, for a pass
    of the checkpointer. But a reader's open transaction (the README's `sqlite3` beside
    the server) answers busy too, and each try on the loop's connection first waited its
    busy timeout (5 s) for the reader, holding that connection and the writers' lock:
    ~4 minutes, which the router's `close` awaits (a shutdown hangs), and in which an
    outage's commit on the loop blocks up to 5 s each try. Now the loop's connection
    never cuts: the checkpointer's thread does, waiting for nothing, until it can."""
    journal_file = tmp_path / "fb.sqlite.entries"
    wal = tmp_path / "fb.sqlite.entries-wal"
    store = OutageFile.claim(str(tmp_path / "fb.sqlite"), DB)
    store.checkpoints.close()
    store.checkpoints = WalCheckpointer(journal_file, interval=0.02)
    store._conn.execute("PRAGMA busy_timeout = 20")  # the loop's 5 s, scaled down
    cuts: list[str] = []
    reader = sqlite3.connect(journal_file, isolation_level=None)
    try:
        seqs = [store.add(_checkpoint("t", n)) for n in range(20)]
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM entries").fetchall()  # a snapshot, held
        store.remove(seqs)
        store._conn.set_trace_callback(
            lambda sql: cuts.append(sql) if "wal_checkpoint(TRUNCATE)" in sql else None
        )
        store.give_back_space()
        assert not cuts, f"the loop's connection tried the cut {len(cuts)} times"
        assert wal.stat().st_size > 0  # pinned by the reader meanwhile
        reader.rollback()
        for _ in range(500):  # the checkpointer's next pass cuts it
            if wal.stat().st_size == 0:
                break
            threading.Event().wait(0.02)
        assert wal.stat().st_size == 0, "the WAL was not cut once the reader left"
    finally:
        store._conn.set_trace_callback(None)
        reader.close()
        store.close()


ran: list[str] = []


def _ran() -> str:
    ran.append("code")
    return DB


class _Planted:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_ran, ())


def test_waiting_does_not_unpickle_a_state_row_from_a_wal_others_may_write(
    tmp_path: Path,
) -> None:
    """`waiting(journal, primary)` (each sibling file, at every start) unpickles the file's
    `primary` state row once `_refuse_foreign` passed the journal file. But the rows it
    reads may sit in `<journal>-wal`, which is not looked at: one writable by others (or
    planted by another user in a shared directory: SQLite opens an existing -wal as it
    is) runs its pickle's code in the server. Here the -wal is mode 0666 and the row a
    pickle that calls a function."""
    dead = OutageFile.claim(str(tmp_path / "fb-2.sqlite"), DB)
    dead.add(_checkpoint("t", 0))
    dead.close()
    journal_file = tmp_path / "fb-2.sqlite.entries"
    planter = sqlite3.connect(journal_file, isolation_level=None)
    try:
        planter.execute("PRAGMA wal_autocheckpoint = 0")
        planter.execute(
            "UPDATE state SET value = ? WHERE key = 'primary'", (pickle.dumps(_Planted()),)
        )
        wal = tmp_path / "fb-2.sqlite.entries-wal"
        assert wal.stat().st_size > 0  # the row is in the WAL (kept while `planter` is open)
        os.chmod(wal, 0o666)
        ran.clear()
        waiting(journal_file, DB)
    finally:
        planter.close()
    assert not ran, "a pickle read from a -wal others may write ran its code"


@pytest.mark.postgres
async def test_a_group_of_big_text_values_is_not_dumped_on_the_loop(
    grouped: GroupCommitSaverPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1de7594 keeps big values off the loop by the bytes `_plan` serialised (`_size`),
    but a checkpoint's str, int, float and bool channel values are stored inline in its
    jsonb (`Jsonb(copy)`), which `_plan` does not serialise and `_size` does not count:
    psycopg dumps every Jsonb of the group at `_write`, on the loop, in one go (one
    jsonb array, `as_one_statement`). 12 threads with a 1 MB text each: ~12 MB of JSON
    dumped on the loop's thread at once, as the review of pg16 found for blobs (16 x 1 MB
    held the loop ~45 ms). At most the lone write and one write of the group may be."""
    size = 1 << 20
    on_loop: list[int] = []
    dumps = json.dumps

    def recorded(obj: Any) -> str:
        text = dumps(obj)
        if threading.current_thread() is threading.main_thread():
            on_loop.append(len(text))
        return text

    monkeypatch.setattr(psycopg.types.json._JsonDumper, "_dumps", recorded)
    by_thread = await threads_entries(THREADS)
    big = [
        with_text(next(e for e in es if isinstance(e, PutCheckpoint)), "x" * size)
        for es in by_thread.values()
    ]
    await asyncio.gather(*(call(grouped, e) for e in big))
    assert grouped.committed == THREADS and grouped.transactions == 2  # alone, then a group
    dumped = sum(on_loop)
    assert dumped <= 2 * size + 100_000, f"{dumped} bytes of JSON dumped on the loop"


def test_a_start_does_not_unpickle_a_state_row_from_a_journal_others_may_write(
    tmp_path: Path,
) -> None:
    """`_refuse_foreign` now looks at each file's `-wal` and `-shm`, not at its rollback
    journal, `<journal>-journal`. SQLite plays a hot rollback journal back into the
    database file at the first open, before it reads the file as WAL: its pages become
    the file's, the `state` row's pickle too. One planted by another user in a shared
    directory (or writable by others, mode 0666 here) runs its code in the server when a
    start takes the file again (`claim`). The journal is made the way SQLite makes one: a
    copy of the file in rollback mode, its transaction left open."""
    dead = OutageFile.claim(str(tmp_path / "fb-3.sqlite"), DB)
    dead.add(_checkpoint("t", 0))
    dead.close()
    journal_file = tmp_path / "fb-3.sqlite.entries"
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(journal_file.read_bytes())
    planter = sqlite3.connect(copy, isolation_level=None)
    try:
        planter.execute("PRAGMA journal_mode = DELETE")
        planter.execute("PRAGMA synchronous = OFF")  # its journal's pages all count
        planter.execute(
            "UPDATE state SET value = ? WHERE key = 'primary'", (pickle.dumps(_Planted()),)
        )
        planter.execute("BEGIN")
        planter.execute("UPDATE state SET value = ? WHERE key = 'primary'", (pickle.dumps(DB),))
        planted = tmp_path / "fb-3.sqlite.entries-journal"
        planted.write_bytes((tmp_path / "copy.sqlite-journal").read_bytes())
        os.chmod(planted, 0o666)
    finally:
        planter.rollback()
        planter.close()
    ran.clear()
    try:
        OutageFile.claim(str(tmp_path / "fb-3.sqlite"), DB).close()
    except ConfigurationError:
        pass  # refused: nothing of it read
    assert not ran, "a pickle read from a -journal others may write ran its code"


def test_a_cut_busy_behind_a_commit_does_not_blame_a_reader(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpointer's TRUNCATE waits for no lock (busy timeout 0): besides a reader,
    a commit of the loop under way (the writers' lock) makes it busy. It takes two PASSIVE
    passes that found no commit in between for "a reader holds it" and WARNs so, once
    per cut that works: at an outage's full rate (~20,000 commits/s, no reader at all)
    that was 7-12 such WARNINGs in 6 s, each naming a sqlite3 shell that is not there.
    Here a connection holds the writers' lock, as a commit does for a moment, while the
    WAL is past its limit; nobody reads."""
    db = tmp_path / "j.sqlite"
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE e (body BLOB)")
    for _ in range(300):
        writer.execute("INSERT INTO e VALUES (zeroblob(4000))")
    checkpoints = WalCheckpointer(db, interval=0.02, limit=1024 * 1024)
    try:
        writer.execute("BEGIN IMMEDIATE")  # a commit under way: the writers' lock
        start = checkpoints.passes
        checkpoints.wrote(300 * 4096)  # what went in: a pass now
        for _ in range(500):  # a few intervals: passes, and cuts tried behind the lock
            if checkpoints.passes >= start + 9:
                break
            threading.Event().wait(0.02)
        writer.execute("COMMIT")
    finally:
        checkpoints.close()
        writer.close()
    blamed = [r.getMessage() for r in caplog.records if "reader" in r.getMessage()]
    assert not blamed, f"a reader was blamed, none there: {blamed}"
