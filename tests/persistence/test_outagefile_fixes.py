"""The durable journal's file across restarts: what a process left in its file loads at
the next start whatever it holds, and the file never holds a later entry without an
earlier one the journal acknowledged (a replay would apply it out of order: a run's end
without the checkpoints before it).

An entry held unread at the start is read again later, with its thread's entries behind
it; entries held so count toward the journal's limit, and a thread's copy waits for the
checkpoint held behind it. An entry the file did not take goes in first once it can. A
dead replica's file is announced, a live one's is not; another database's file (also
one whose query names another schema or server) is left alone, and named once at a
restart.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import sqlite3
import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from langgraph.checkpoint.base import empty_checkpoint

from code_hero.config import create_memory_checkpointer, create_sqlite_checkpointer
from code_hero.persistence.backends import open_backend
from code_hero.persistence.entries import CopyThread, DeleteThread, FinishRun, PutCheckpoint
from code_hero.persistence.journal import Journal
from code_hero.persistence.outagefile import OutageFile, same_database
from code_hero.persistence.records import RunRecord, RunStatus, ThreadRecord, ThreadStatus
from tests.persistence.test_outagefile import RUN, Unpicklable

DB = "postgresql://db"
MODULE = "code_hero_user_graph_fixes_notes"


def _claimed(path: str, database: str = DB) -> tuple[OutageFile, Journal]:
    """The file at `path` claimed for `database`, with a journal attached to it."""
    store = OutageFile.claim(path, database)
    journal = Journal(100)
    journal.attach(store, {})
    return store, journal


class Note:
    """A value of a graph's module: pickled under that module's name."""

    def __init__(self, text: str) -> None:
        self.text = text


@contextlib.contextmanager
def _graph_module() -> Iterator[types.ModuleType]:
    """A graph's module holding `Note`, loaded (in `sys.modules`) until the block ends;
    a test unloads and loads it again as a process restarting would."""
    module = types.ModuleType(MODULE)
    Note.__module__ = MODULE
    module.Note = Note  # type: ignore[attr-defined]
    sys.modules[MODULE] = module
    try:
        yield module
    finally:
        sys.modules.pop(MODULE, None)
        Note.__module__ = __name__


class Flaky:
    """A value pickle refuses the first time only (the file failing, then working)."""

    refuse = True

    def __reduce__(self) -> Any:
        if Flaky.refuse:
            raise OSError("No space left on device")
        return (Flaky, ())


def _checkpoint(thread_id: str, value: Any) -> PutCheckpoint:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"x": value}
    config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": "", "run_id": RUN}}
    return PutCheckpoint(config, checkpoint, {"step": 1}, {})


def test_an_entry_held_at_the_start_is_read_after_the_graphs_load(tmp_path: Path) -> None:
    path = str(tmp_path / "fb.sqlite")
    with _graph_module() as module:
        store, journal = _claimed(path)
        journal.append(_checkpoint("t1", Note("kept")))
        journal.append(FinishRun(RUN, "t1", {"status": RunStatus.SUCCESS}, "exec-1"))
        journal.append(DeleteThread("other"))
        store.close()
        del sys.modules[MODULE]  # the next process, before its graphs load

        again, journal2 = _claimed(path)
        # The other thread goes on; t1's end waits behind its unread checkpoint.
        assert [type(e) for e in journal2.entries] == [DeleteThread]
        assert journal2.held_count == 2 and "t1" in journal2.quarantined_threads()
        journal2.append(DeleteThread("t1"))  # a write of t1 meanwhile: behind them too
        assert journal2.held_count == 3
        assert journal2.retry_held(serving=False) == 0  # still unreadable: kept
        sys.modules[MODULE] = module  # the graphs loaded
        assert journal2.retry_held(serving=False) == 3
        assert [type(e) for e in journal2.entries] == [
            DeleteThread,
            PutCheckpoint,
            FinishRun,
            DeleteThread,
        ]
        assert journal2.held == {} and journal2.durable
        again.close()
        with sqlite3.connect(tmp_path / "fb.sqlite.entries") as conn:  # all in the file
            assert conn.execute("SELECT count(*) FROM entries").fetchone() == (4,)
        conn.close()


def test_a_copy_loaded_from_the_file_replays_as_a_late_copy(tmp_path: Path) -> None:
    path = str(tmp_path / "fb.sqlite")
    store, journal = _claimed(path)
    journal.append(CopyThread("t1", {}))
    store.close()
    again, journal2 = _claimed(path)
    [copy] = journal2.entries
    assert isinstance(copy, CopyThread) and copy.only_missing  # never replaces newer rows
    again.close()


def test_entries_the_file_did_not_take_go_in_first_and_in_order(tmp_path: Path) -> None:
    path = str(tmp_path / "fb.sqlite")
    store, journal = _claimed(path)
    Flaky.refuse = True
    try:
        journal.append(_checkpoint("t1", Flaky()))  # the file refuses it: acknowledged
        journal.append(FinishRun(RUN, "t1", {"status": RunStatus.SUCCESS}, "exec-1"))
        journal.append(DeleteThread("t2"))  # another thread is not held up
        assert not journal.durable
        Flaky.refuse = False  # the file works again
        journal.append(DeleteThread("t3"))  # any thread's write: the backlog goes first
        assert journal.durable
        journal.append(DeleteThread("t1"))
    finally:
        Flaky.refuse = True
    store.close()
    with sqlite3.connect(tmp_path / "fb.sqlite.entries") as conn:
        rows = conn.execute("SELECT thread_id, body FROM entries ORDER BY seq").fetchall()
    conn.close()
    kinds = [(thread, pickle.loads(body)[0]) for thread, body in rows]
    assert kinds == [
        ("t2", "DeleteThread"),
        ("t1", "PutCheckpoint"),
        ("t1", "FinishRun"),
        ("t3", "DeleteThread"),
        ("t1", "DeleteThread"),
    ]


def test_a_live_replicas_file_is_not_announced(tmp_path: Path, caplog: Any) -> None:
    path = str(tmp_path / "fb.sqlite")
    first = OutageFile.claim(path, DB)
    stores = [OutageFile.claim(path, DB) for _ in range(3)]  # fb-2 .. fb-4
    for store in stores:
        journal = Journal(100)
        journal.attach(store, {})
        journal.append(DeleteThread("acknowledged"))
    live, dead, dead_too = stores  # fb-2 held by a live process
    dead.close()
    dead_too.close()
    first.close()
    restarted = OutageFile.claim(path, DB)  # fb-3: the first a dead process left writes in
    assert restarted.data_path == str(tmp_path / "fb-3.sqlite")
    assert "fb-2.sqlite" not in caplog.text
    assert "fb-4.sqlite holds 1 outage writes" in caplog.text
    restarted.close()
    live.close()


def test_a_corrupt_journal_file_is_moved_aside_and_the_start_goes_on(
    tmp_path: Path, caplog: Any
) -> None:
    path = tmp_path / "fb.sqlite"
    (tmp_path / "fb.sqlite.entries").write_bytes(b"not a database, a truncated copy" * 200)
    store, journal = _claimed(str(path))
    journal.append(DeleteThread("t1"))  # a working file
    store.close()
    [aside] = tmp_path.glob("fb.sqlite.entries.corrupt-*")
    assert aside.read_bytes().startswith(b"not a database")
    assert str(aside) in caplog.text and "cannot be read" in caplog.text


def test_the_same_database_named_another_way_keeps_the_files_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "fb.sqlite")
    store, journal = _claimed(path, "postgresql://app@db.local/prod")
    journal.append(DeleteThread("kept"))
    store.close()
    # The URL's spelling changed (scheme, default port, query options): same database.
    again, journal2 = _claimed(path, "postgres://app:***@DB.local:5432/prod?sslmode=require")
    assert again.data_path == path and journal2.threads() == {"kept"}
    again.close()
    other = OutageFile.claim(path, "postgresql://app@db.local/staging")  # another one
    assert other.data_path != path  # the file waits for its own database
    other.close()


def test_a_restart_names_another_databases_file_once(tmp_path: Path, caplog: Any) -> None:
    """A live server holds fb; fb-2 holds another database's outage, its process gone.
    A restart used to say so in one WARNING (README: "a `WARNING` names it"). Now the
    orphan look (`OutageFile.orphan`) says it is left alone, the name loop says it again
    with advice to start a server on it by hand, and the waiting files' WARNING adds that
    "a server on the same database adopts" it: three lines for one file at each start,
    two of them with different advice."""
    live = OutageFile.claim(str(tmp_path / "fb.sqlite"), DB)
    foreign, journal = _claimed(str(tmp_path / "fb-2.sqlite"), "postgresql://db.elsewhere/other")
    journal.append(DeleteThread("another-databases"))
    foreign.close()
    caplog.set_level(logging.WARNING)
    try:
        restarted = OutageFile.claim(str(tmp_path / "fb.sqlite"), DB)
        restarted.close()
    finally:
        live.close()
    named = [r.getMessage() for r in caplog.records if "fb-2.sqlite" in r.getMessage()]
    assert len(named) == 1, named


def test_an_entry_this_version_cannot_read_does_not_stop_the_next_start(tmp_path: Path) -> None:
    path = str(tmp_path / "fb.sqlite")
    store, journal = _claimed(path)
    journal.append(DeleteThread("kept"))
    store.close()
    # What an older version wrote: an entry class whose fields changed since (an upgrade
    # during an outage), or a value of a graph's module this process has not imported.
    with sqlite3.connect(tmp_path / "fb.sqlite.entries") as conn:
        conn.execute(
            "INSERT INTO entries (thread_id, body) VALUES (?, ?)",
            ("old", pickle.dumps(("DeleteThread", {"thread_id": "old", "since_removed": 1}))),
        )
    conn.close()

    again, journal2 = _claimed(path)  # must not raise: the server would not start at all
    assert "kept" in journal2.threads()
    again.close()
    with sqlite3.connect(tmp_path / "fb.sqlite.entries") as conn:  # and nothing dropped
        assert conn.execute("SELECT count(*) FROM entries").fetchone() == (2,)
    conn.close()


def test_an_entry_the_file_did_not_take_leaves_none_behind_it_there(tmp_path: Path) -> None:
    path = str(tmp_path / "fb.sqlite")
    store, journal = _claimed(path)
    checkpoint = empty_checkpoint()
    # A value the fallback's saver stored but pickle refuses (the same path as a full
    # disk under the journal's file): the write is acknowledged, in memory only.
    checkpoint["channel_values"] = {"x": Unpicklable()}
    config: Any = {"configurable": {"thread_id": "t1", "checkpoint_ns": "", "run_id": RUN}}
    acknowledged = [
        PutCheckpoint(config, checkpoint, {"step": 1}, {}),
        FinishRun(RUN, "t1", {"status": RunStatus.SUCCESS}, "exec-1"),
    ]
    for entry in acknowledged:
        journal.append(entry)
    store.close()  # the process dies

    again, journal2 = _claimed(path)
    left = [type(e) for e in journal2.entries]
    again.close()
    # A prefix of what was acknowledged, never the run's end without its checkpoint.
    assert left == [type(e) for e in acknowledged][: len(left)], left


def test_a_start_that_leaves_a_dead_replicas_file_waiting_says_so(
    tmp_path: Path, caplog: Any
) -> None:
    # Two replicas on one machine: the second's file is fb-2. Both die in an outage,
    # each with writes it acknowledged; one server is started again.
    path = str(tmp_path / "fb.sqlite")
    first = OutageFile.claim(path, DB)
    second = OutageFile.claim(path, DB)
    assert second.data_path == str(tmp_path / "fb-2.sqlite")
    for store in (first, second):
        journal = Journal(100)
        journal.attach(store, {})
        journal.append(DeleteThread("acknowledged"))
    second.close()
    first.close()

    restarted = OutageFile.claim(path, DB)  # takes fb.sqlite, resuming its outage
    restarted.close()
    # fb-2's writes wait for a second server that may never start (scaled down after
    # the crash): a live server adopts the file (`adoption.py`), and says so first.
    assert restarted.data_path == str(tmp_path / "fb.sqlite")
    assert "fb-2.sqlite holds 1 outage writes of a process that is gone" in caplog.text
    assert "adopts the file" in caplog.text


def test_a_file_of_another_schema_or_server_named_in_the_query_is_left_alone(
    tmp_path: Path,
) -> None:
    """`same_database` drops the whole query, but libpq takes the server and the schema
    from it too: `options=-csearch_path=...` (the way README and the tests name a schema),
    `host=` (a socket directory), `port=`, `dbname=`. Before the merge a file of another
    deployment (its own schema, same database) was left alone; now its outage writes are
    replayed into this one's tables."""
    theirs = "postgresql://app@db.local/prod?options=" + quote("-csearch_path=tenant_a")
    ours = "postgresql://app@db.local/prod?options=" + quote("-csearch_path=tenant_b")
    assert not same_database(theirs, ours)
    assert not same_database("postgresql:///prod?host=/run/a", "postgresql:///prod?host=/run/b")
    assert not same_database("postgresql:///prod?port=5433", "postgresql:///prod?port=5432")

    path = str(tmp_path / "fb.sqlite")
    store, journal = _claimed(path, theirs)
    journal.append(DeleteThread("tenant-a-thread"))
    store.close()  # tenant A's replica died in an outage
    other = OutageFile.claim(path, ours)
    try:
        assert other.data_path != path  # tenant A's file waits for tenant A's database
    finally:
        other.close()


def _held_thread(tmp_path: Path, thread_id: str) -> tuple[OutageFile, Journal, str]:
    """A file a dead process left holding an entry of `thread_id` this version cannot
    read (an entry class of another version), and a journal of limit 3 attached to it."""
    path = str(tmp_path / "fb.sqlite")
    store = OutageFile.claim(path, DB)
    Journal(100).attach(store, {})
    store.close()
    with sqlite3.connect(tmp_path / "fb.sqlite.entries") as conn:
        conn.execute(
            "INSERT INTO entries (thread_id, body) VALUES (?, ?)",
            (thread_id, pickle.dumps(("DeleteThread", {"thread_id": thread_id, "gone": 1}))),
        )
    conn.close()
    again = OutageFile.claim(path, DB)
    journal = Journal(3)
    journal.attach(again, {})
    return again, journal, path


def test_writes_queued_behind_a_held_entry_count_toward_the_journals_limit(
    tmp_path: Path,
) -> None:
    """The journal's limit keeps an outage from growing the process until the kernel
    kills it. A thread held behind an unreadable entry (an upgrade: held for good) takes
    its later writes into `held`, which `full` does not count: an outage's writes of
    that thread grow without bound and are never refused."""
    store, journal, _ = _held_thread(tmp_path, "t")
    try:
        assert journal.held_count == 1
        for _ in range(10):
            if journal.full:
                break
            journal.append(DeleteThread("t"))
        assert journal.full, f"{journal.held_count} entries held, the limit is 3"
    finally:
        store.close()


async def test_a_threads_copy_waits_for_its_checkpoint_held_behind_it(tmp_path: Path) -> None:
    """A thread born in the outage: its copy (`CopyThread`), then a checkpoint of its run
    holding a graph's class; the run ended on the fallback (the copy, still waiting,
    stands for that). The next process reads the copy but holds the checkpoint. The
    drain counts only the entries in memory behind the copy (`_deferring`): none, so it
    copies the finished run whole, and the primary has the run ended without the
    checkpoint it ended with (the journal's rule: a run's end goes in after its
    checkpoints), for good if the entry stays unreadable (an upgrade)."""
    path = str(tmp_path / "fb.sqlite")
    with _graph_module():
        store, journal = _claimed(path)
        journal.append(CopyThread("t1", {}))
        journal.append(_checkpoint("t1", Note("the run's last state")))
        store.close()
        del sys.modules[MODULE]  # the next process, before its graphs load

        again, journal2 = _claimed(path)
        assert journal2.held_count == 1
        now = datetime.now(UTC)
        local = open_backend(create_memory_checkpointer())
        local.enforce_references = False
        async with (
            local as fallback,
            open_backend(create_sqlite_checkpointer(str(tmp_path / "p.sqlite"))) as primary,
        ):
            await fallback.registry.put_thread(
                ThreadRecord("t1", None, ThreadStatus.IDLE, {}, now, now)
            )
            await fallback.registry.put_run(
                RunRecord(RUN, "t1", "g", RunStatus.SUCCESS, created_at=now, finished_at=now)
            )
            await journal2.drain(
                primary=primary,
                fallback=fallback,
                is_unreachable=lambda exc: False,
                on_synced=lambda: None,
            )
            run = await primary.registry.get_run(RUN)
            assert run is None or not run.status.finished, "ended before its checkpoint"
        again.close()
