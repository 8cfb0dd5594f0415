"""The durable fallback's journal file: WAL checkpoints off the loop, unreadable state
rows, and a thread's deletion in one commit."""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.persistence.entries import DeleteThread, PutCheckpoint
from code_hero.persistence.journal import Journal
from code_hero.persistence.outagefile import OutageFile

DB = "postgresql://db"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _checkpoint(thread_id: str, n: int, size: int = 100_000) -> PutCheckpoint:
    checkpoint = empty_checkpoint()
    checkpoint["id"] = f"{n:032d}"
    checkpoint["channel_values"] = {"blob": os.urandom(size)}
    config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    return PutCheckpoint(config, checkpoint, {}, {})  # type: ignore[typeddict-item]


def _until(condition: Any, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "not reached"
        time.sleep(0.01)


def test_the_wal_is_checkpointed_off_the_loops_connection_and_stays_bounded(
    tmp_path: Path,
) -> None:
    """SQLite's automatic checkpoint ran inside the commit on the event loop (a 10-40 ms
    stall at p99 with large entries): it is off on the loop's connection, and a thread
    of its own checkpoints, so the WAL is reused instead of growing."""
    store = OutageFile.claim(str(tmp_path / "fb.sqlite"), DB)
    try:
        [(auto,)] = store._conn.execute("PRAGMA wal_autocheckpoint").fetchall()
        assert auto == 0
        store.checkpoints.every_bytes = 1_000_000
        store.checkpoints.interval = 0.05
        journal = Journal(10_000)
        journal.attach(store, {})
        wal = tmp_path / "fb.sqlite.entries-wal"
        largest = 0
        for n in range(400):  # 40 MB written, in rounds of 2 MB
            journal.append(_checkpoint(f"t{n % 4}", n))
            largest = max(largest, wal.stat().st_size)
            if n % 20 == 19:
                # Checkpointed meanwhile by the thread, caught up: the next commit
                # starts the WAL over.
                _until(lambda: store.checkpoints.idle)
        assert store.checkpoints.passes >= 20
        assert store.checkpoints.thread_ids
        assert threading.get_ident() not in store.checkpoints.thread_ids
        assert largest < 8_000_000  # reused: about a round, not the 40 MB written
    finally:
        store.close()
    again = OutageFile.claim(str(tmp_path / "fb.sqlite"), DB)
    assert len(again.load().entries) == 400
    again.close()


def test_entries_acknowledged_while_the_wal_is_checkpointed_survive_a_sigkill(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "fb.sqlite")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    program = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from tests.persistence.test_walstall import _checkpoint\n"
        "from code_hero.persistence.journal import Journal\n"
        "from code_hero.persistence.outagefile import OutageFile\n"
        f"store = OutageFile.claim({path!r}, {DB!r})\n"
        "store.checkpoints.every_bytes = 500_000\n"
        "journal = Journal(10_000)\n"
        "journal.attach(store, {})\n"
        "for n in range(10_000):\n"
        "    journal.append(_checkpoint('t', n, 50_000))\n"
        "    print(n, flush=True)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, text=True, env=env
    ) as writer:
        assert writer.stdout is not None
        acknowledged = -1
        try:
            while acknowledged < 300:
                acknowledged = int(writer.stdout.readline())
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
    store = OutageFile.claim(path, DB)
    try:
        assert len(store.load().entries) >= acknowledged + 1
    finally:
        store.close()


DOWN = "postgresql://nobody@127.0.0.1:1/none"


def _kinds(journal_file: Path, thread_id: str) -> list[str]:
    """The kinds of a thread's entries in the journal's file, in order (read beside the
    process holding it: WAL)."""
    with sqlite3.connect(journal_file) as conn:
        bodies = conn.execute(
            "SELECT body FROM entries WHERE thread_id = ? ORDER BY seq", (thread_id,)
        ).fetchall()
    return [pickle.loads(body)[0] for (body,) in bodies]


async def test_a_deletion_in_an_outage_cut_short_leaves_the_thread_or_its_deletion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting a thread born in an outage cleared its entries in one commit and wrote
    the deletion in another, after the fallback's own deletion: a kill in between left
    neither (the next process copied nothing of it, and what a copy-back cut short had
    put in the primary stayed there). Now both go in one commit: cut short anywhere, the
    file holds the thread's entries, or its deletion."""
    from code_hero.config import create_postgres_checkpointer
    from code_hero.gateway import Gateway, GatewaySettings
    from code_hero.runs.executor import StartRun
    from tests.persistence.proxied import SLOW_SPEC

    config = create_postgres_checkpointer(
        DOWN, fallback_path=str(tmp_path / "fb.sqlite"), pool_timeout=1
    )
    journal_file = tmp_path / "fb.sqlite.entries"
    settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_SPEC})
    async with Gateway(settings) as gw:
        run = await gw.start_run(StartRun(graph="slow", input={}, wait=True))
        before = _kinds(journal_file, run.thread_id)
        assert "PutCheckpoint" in before
        router = gw.manager.router
        fallback = router.slots[1].backend
        assert fallback is not None

        async def killed(thread_id: str) -> None:  # the process dies at this await
            raise KeyboardInterrupt("killed")

        monkeypatch.setattr(fallback.saver, "adelete_thread", killed)
        with pytest.raises(KeyboardInterrupt):
            await router.delete_thread(run.thread_id)
        assert _kinds(journal_file, run.thread_id) == before
        monkeypatch.undo()
        await router.delete_thread(run.thread_id)
        assert _kinds(journal_file, run.thread_id) == ["DeleteThread"]


class Renamed:
    """A class of the state an upgrade renames."""


def _write_state(journal_file: Path, key: str, value: bytes) -> None:
    with sqlite3.connect(journal_file) as conn:
        conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, value))


def test_state_rows_this_process_cannot_read_stop_no_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A state row that failed to unpickle (a class renamed, a truncated row) raised out
    of the start: now it is named in a WARNING and what stands in for it is safe (an
    outage of unknown start is resumed, so its writes are copied back)."""
    path = str(tmp_path / "fb.sqlite")
    journal_file = tmp_path / "fb.sqlite.entries"
    store = OutageFile.claim(path, DB)
    journal = Journal(100)
    journal.attach(store, {})
    journal.append(DeleteThread("t"))
    store.close()
    _write_state(journal_file, "refused", pickle.dumps({"run": Renamed()}))
    _write_state(journal_file, "outage", pickle.dumps((None, None))[:-3])  # truncated
    monkeypatch.delattr(sys.modules[__name__], "Renamed")
    with caplog.at_level("WARNING"):
        again = OutageFile.claim(path, DB)
        journal = Journal(100)
        loaded = journal.attach(again, {})
    try:
        assert again.data_path == path
        assert [type(e).__name__ for e in journal.entries] == ["DeleteThread"]
        assert loaded.state["outage"] == (None, None)  # resumed: copied back at once
        assert journal.refused_runs == {}
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("'refused' state row" in m for m in warned), warned
        assert any("'outage' state row" in m for m in warned), warned
    finally:
        again.close()


def test_a_file_whose_database_cannot_be_read_keeps_its_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "fb.sqlite")
    journal_file = tmp_path / "fb.sqlite.entries"
    store = OutageFile.claim(path, DB)
    journal = Journal(100)
    journal.attach(store, {})
    journal.append(DeleteThread("t"))
    store.close()
    _write_state(journal_file, "primary", b"\x80\x05garbage")
    with caplog.at_level("WARNING"):
        other = OutageFile.claim(path, DB)  # not started afresh: its writes kept
    assert other.data_path == str(tmp_path / "fb-2.sqlite")
    other.close()
    assert _kinds(journal_file, "t") == ["DeleteThread"]
    assert "cannot name" in caplog.text
    with sqlite3.connect(journal_file) as conn:
        conn.execute("DELETE FROM entries")
    empty = OutageFile.claim(path, DB)  # nothing waits in it: started afresh
    assert empty.data_path == path and empty.state("primary") == DB
    empty.close()
