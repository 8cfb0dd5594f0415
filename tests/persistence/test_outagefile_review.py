"""Review of the durable journal: what a process left in its file must load at the next
start whatever it holds, and the file must never hold a later entry without an earlier
one the journal acknowledged (a replay would apply it out of order: a run's end
without the checkpoints before it)."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import empty_checkpoint

from code_hero.persistence.entries import DeleteThread, FinishRun, PutCheckpoint
from code_hero.persistence.journal import Journal
from code_hero.persistence.outagefile import OutageFile
from code_hero.persistence.records import RunStatus
from tests.persistence.test_outagefile import RUN, Unpicklable

DB = "postgresql://db"


def test_an_entry_this_version_cannot_read_does_not_stop_the_next_start(tmp_path: Path) -> None:
    path = str(tmp_path / "fb.sqlite")
    store = OutageFile.claim(path, DB)
    journal = Journal(100)
    journal.attach(store, {})
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

    again = OutageFile.claim(path, DB)
    journal2 = Journal(100)
    journal2.attach(again, {})  # must not raise: the server would not start at all
    assert "kept" in journal2.threads()
    again.close()
    with sqlite3.connect(tmp_path / "fb.sqlite.entries") as conn:  # and nothing dropped
        assert conn.execute("SELECT count(*) FROM entries").fetchone() == (2,)
    conn.close()


def test_an_entry_the_file_did_not_take_leaves_none_behind_it_there(tmp_path: Path) -> None:
    path = str(tmp_path / "fb.sqlite")
    store = OutageFile.claim(path, DB)
    journal = Journal(100)
    journal.attach(store, {})
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

    again = OutageFile.claim(path, DB)
    journal2 = Journal(100)
    journal2.attach(again, {})
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
