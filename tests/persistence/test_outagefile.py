"""The durable journal: every entry kind round-trips through the file; one process a file.

A journal attached to an `OutageFile` keeps its entries, quarantine and refusals
there; a second journal attached to the same file after the first's connection is
gone (a process that died) gets the same entries back, equal field by field, the
maps they share joined to its own.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.config import create_postgres_checkpointer
from code_hero.persistence import outagefile
from code_hero.persistence.entries import (
    ChangeRun,
    CopyEvents,
    CopyThread,
    DeleteRun,
    DeleteThread,
    Entry,
    FinishRun,
    PutCheckpoint,
    PutWrites,
    Refusal,
    ReleaseEdit,
    ReleaseRun,
    TouchThread,
)
from code_hero.persistence.journal import Journal
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.outagefile import FallbackFileBusyError, OutageFile
from code_hero.persistence.records import EventRecord, RunStatus
from tests.faults import until

NOW = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
RUN = "6f9d3c1e-6a4e-4f0e-9b1a-2d5c7e9f1a3b"


class Unpicklable:
    """Something of LangGraph's runtime a checkpoint's config carries (a stream writer)."""

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle this")


def every_kind(journal: Journal, copied: dict[str, int]) -> list[Entry]:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"messages": [{"role": "user", "content": "hi"}], "n": 3}
    checkpoint["channel_versions"] = {"messages": "1", "n": "2"}
    config: Any = {
        "configurable": {
            "thread_id": "t1",
            "checkpoint_ns": "",
            "checkpoint_id": checkpoint["id"],
            "run_id": uuid.UUID(RUN),
            "__pregel_send": Unpicklable(),
        },
        "callbacks": Unpicklable(),
    }
    event = EventRecord(RUN, "t1", 3, "status", {"status": "SUCCESS"}, NOW)
    refused = journal.refused_runs
    return [
        PutCheckpoint(config, checkpoint, {"step": 1, "source": "loop"}, {"n": "2"}),
        PutWrites(config, (("n", 4), ("messages", [{"x": b"bytes"}])), "task", "path"),
        CopyThread("t1", copied, refused=refused),
        CopyEvents(RUN, "t1", copied, owner="exec-1"),
        ChangeRun(RUN, "t1", {"lease_until": NOW, "status": RunStatus.RUNNING}, owner="exec-1"),
        ReleaseRun(RUN, "t2", "exec-1"),
        FinishRun(RUN, "t1", {"status": RunStatus.SUCCESS}, "exec-1", (event,), refused),
        DeleteRun(RUN, "t3"),
        ReleaseEdit("t4", NOW),
        TouchThread("t5", "user", create=False, at=NOW),
        DeleteThread("t6"),
    ]


def fields_of(entry: Entry) -> dict[str, Any]:
    return {f.name: getattr(entry, f.name) for f in fields(entry)}  # type: ignore[arg-type]


def test_every_entry_kind_round_trips_with_the_shared_maps_joined_again(tmp_path: Path) -> None:
    store = OutageFile.claim(str(tmp_path / "fb.sqlite"), "postgresql://db")
    journal, copied = Journal(100), {RUN: 2}
    journal.attach(store, copied)
    written = every_kind(journal, copied)
    for entry in written:
        journal.append(entry)
    store.close()  # the process dies: nothing more than what each append committed

    again = OutageFile.claim(str(tmp_path / "fb.sqlite"), "postgresql://db")
    journal2, copied2 = Journal(100), {}
    journal2.attach(again, copied2)
    loaded = list(journal2.entries)
    assert [type(e) for e in loaded] == [type(e) for e in written]
    for before, after in zip(written, loaded, strict=True):
        mine, theirs = fields_of(before), fields_of(after)
        if "config" in mine:  # only what the savers read of it: plain values
            assert theirs["config"] == {
                "configurable": {
                    "thread_id": "t1",
                    "checkpoint_ns": "",
                    "checkpoint_id": before.checkpoint["id"]  # type: ignore[attr-defined]
                    if isinstance(before, PutCheckpoint)
                    else mine["config"]["configurable"]["checkpoint_id"],
                    "run_id": uuid.UUID(RUN),
                }
            }
            del mine["config"], theirs["config"]
        for shared in ("copied", "refused"):
            if shared in theirs:
                assert theirs[shared] is (copied2 if shared == "copied" else journal2.refused_runs)
                del mine[shared], theirs[shared]
        if "only_missing" in theirs:  # a copy from a dead process's file replays late
            assert theirs.pop("only_missing") is True
            mine.pop("only_missing")
        assert theirs == mine
    assert loaded[0].written_by == RUN  # type: ignore[attr-defined]
    assert journal2.threads() == {"t1", "t2", "t3", "t4", "t5", "t6"}
    again.close()


class Refuses:
    """A primary that refuses every value it is given, as a database refuses one it
    cannot store (the journal's drain is all that is exercised here)."""

    batches = False

    def __init__(self) -> None:
        self.saver = self.registry = self

    async def aput(self, *args: Any) -> None:
        raise sqlite3.DataError("\\u0000 cannot be converted to text")

    async def touch_threads(self, *args: Any, **kwargs: Any) -> None:
        raise sqlite3.DataError("a value out of range")


async def _drain_refused(journal: Journal) -> None:
    await journal.drain(
        primary=Refuses(),  # type: ignore[arg-type]
        fallback=None,  # type: ignore[arg-type]
        is_unreachable=lambda exc: False,
        on_synced=lambda: None,
    )


def test_replayed_entries_leave_the_file_and_the_quarantine_stays(tmp_path: Path) -> None:
    path = str(tmp_path / "fb.sqlite")
    store = OutageFile.claim(path, "postgresql://db")
    journal = Journal(100)
    journal.attach(store, {})
    entries = every_kind(journal, {})
    journal.append(entries[0])
    journal.append(DeleteThread("gone"))
    journal.append(TouchThread("t5", "user", create=False, at=NOW))
    journal.drop_thread_locked("gone")
    asyncio.run(_drain_refused(journal))  # the checkpoint is refused, the touch too
    assert len(journal) == 0 and len(journal.quarantine) == 2
    store.close()

    again = OutageFile.claim(path, "postgresql://db")
    journal2 = Journal(100)
    journal2.attach(again, {})
    assert len(journal2) == 0
    assert [type(q.entry) for q in journal2.quarantine] == [PutCheckpoint, TouchThread]
    assert journal2.quarantine[0].failures == 1 and "converted" in journal2.quarantine[0].last_error
    assert set(journal2.refused_runs) == {RUN}
    assert isinstance(journal2.refused_runs[RUN], Refusal)
    again.close()


def test_a_second_claim_takes_the_next_file_and_a_freed_one_is_taken_again(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "fb.sqlite")
    first = OutageFile.claim(path, "postgresql://db")
    second = OutageFile.claim(path, "postgresql://db")
    assert first.data_path == path
    assert second.data_path == str(tmp_path / "fb-2.sqlite")
    assert (tmp_path / "fb.sqlite.entries").stat().st_mode & 0o777 == 0o600
    first.close()
    third = OutageFile.claim(path, "postgresql://db")
    assert third.data_path == path
    second.close()
    third.close()


def test_another_process_holding_the_file_keeps_it(tmp_path: Path) -> None:
    path = str(tmp_path / "fb.sqlite")
    source = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    program = (
        "import sys\n"
        "from code_hero.persistence.outagefile import OutageFile\n"
        f"f = OutageFile.claim({path!r}, 'postgresql://db')\n"
        "print(f.data_path, flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", program],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as holder:
        assert holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == path
            mine = OutageFile.claim(path, "postgresql://db")
            assert mine.data_path != path
            mine.close()
        finally:
            holder.kill()
            holder.wait()
    freed = OutageFile.claim(path, "postgresql://db")  # the kernel dropped the dead one's lock
    assert freed.data_path == path
    freed.close()


def test_a_look_at_a_file_is_not_taken_for_a_live_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A live server's adoption looks at each sibling file under a shared lock of its
    # lock file (`waiting`). A replica starting in that instant took the name for a
    # live one's and went on to the next (CI: the second replica on fallback-3).
    path = str(tmp_path / "fb.sqlite")
    OutageFile.claim(path, "postgresql://db").close()  # the file and its lock file exist
    look = os.open(tmp_path / "fb.sqlite.entries-lock", os.O_RDWR)
    fcntl.flock(look, fcntl.LOCK_SH | fcntl.LOCK_NB)
    held, open_looks = outagefile._held, [look]

    def look_ends(fd: int) -> bool:  # the look ends once the claim found it refused
        while open_looks:
            os.close(open_looks.pop())
        return held(fd)

    monkeypatch.setattr(outagefile, "_held", look_ends)
    mine = OutageFile.claim(path, "postgresql://db")
    assert mine.data_path == path
    mine.close()


@pytest.mark.postgres
async def test_a_look_ended_by_the_loop_does_not_cost_a_start_its_name(
    tmp_path: Path, pg_database: str
) -> None:
    # A start's claim waits the look out off the loop: on it, a look the loop itself
    # would end (anything of this process's) could never end in time.
    path = tmp_path / "fb.sqlite"
    config = create_postgres_checkpointer(pg_database, fallback_path=str(path))
    OutageFile.claim(str(path), config.describe()).close()  # the lock file exists
    look = os.open(tmp_path / "fb.sqlite.entries-lock", os.O_RDWR)
    fcntl.flock(look, fcntl.LOCK_SH | fcntl.LOCK_NB)  # another server's look (`waiting`)
    asyncio.get_running_loop().call_soon(os.close, look)  # ends at the loop's next turn
    async with EnhancedCheckpointerManager(config) as manager:
        store = manager.router.store
        assert store is not None
        assert store.path == path, store.path  # not fb-2.sqlite


@pytest.mark.postgres
async def test_a_start_cancelled_while_its_claim_waits_leaves_the_file_free(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fb.sqlite"
    config = create_postgres_checkpointer(pg_database, fallback_path=str(path))
    OutageFile.claim(str(path), config.describe()).close()  # the lock file exists
    look = os.open(tmp_path / "fb.sqlite.entries-lock", os.O_RDWR)
    fcntl.flock(look, fcntl.LOCK_SH | fcntl.LOCK_NB)  # another server's look
    held, claim = outagefile._held, OutageFile.claim
    waits, claimed = threading.Event(), threading.Event()

    def seen(fd: int) -> bool:
        waits.set()
        return held(fd)

    def told(path: str, primary: str) -> OutageFile:
        try:
            return claim(path, primary)
        finally:
            claimed.set()

    monkeypatch.setattr(outagefile, "_held", seen)
    monkeypatch.setattr(OutageFile, "claim", told)
    start = asyncio.create_task(EnhancedCheckpointerManager(config).initialize())
    await asyncio.to_thread(waits.wait)  # the claim waits the look out on its thread
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    os.close(look)  # the claim then takes the file, for a start given up on
    await asyncio.to_thread(claimed.wait)
    monkeypatch.undo()

    async def free() -> bool:
        found = OutageFile.claim(str(path), config.describe())
        found.close()
        return found.data_path == str(path)

    await until(free)


def test_another_databases_outage_is_left_alone(tmp_path: Path, monkeypatch: Any) -> None:
    path = str(tmp_path / "fb.sqlite")
    store = OutageFile.claim(path, "postgresql://one")
    journal = Journal(100)
    journal.attach(store, {})
    journal.append(DeleteThread("t"))
    store.close()
    other = OutageFile.claim(path, "postgresql://two")
    assert other.data_path == str(tmp_path / "fb-2.sqlite")
    other.close()
    monkeypatch.setattr("code_hero.persistence.outagefile.MAX_FILES", 1)
    with pytest.raises(FallbackFileBusyError, match="CODE_HERO_FALLBACK_PATH"):
        OutageFile.claim(path, "postgresql://two")


def test_a_relative_path_with_a_sibling_file_present_claims_the_next_name(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # The default CODE_HERO_FALLBACK_PATH is relative (in the working directory): the
    # second replica started there found the first one's file and died with a
    # traceback ("relative path can't be expressed as a file URI").
    monkeypatch.chdir(tmp_path)
    first = OutageFile.claim("code-hero-fallback.sqlite", "postgresql://db")
    second = OutageFile.claim("code-hero-fallback.sqlite", "postgresql://db")
    assert second.data_path == str(tmp_path / "code-hero-fallback-2.sqlite")
    assert first.data_path == str(tmp_path / "code-hero-fallback.sqlite")
    first.close()
    second.close()


def test_a_close_whose_checkpointer_fails_still_releases_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing step of the close (its WAL checkpointer's) raises, and the connection
    and lock go all the same: else the file stayed this process's until it ended."""
    path = str(tmp_path / "fb.sqlite")
    first = OutageFile.claim(path, "postgresql://db")

    def fails() -> None:
        raise RuntimeError("the checkpointer's close failed")

    monkeypatch.setattr(first.checkpoints, "close", fails)
    with pytest.raises(RuntimeError):
        first.close()
    again = OutageFile.claim(path, "postgresql://db")
    try:
        assert again.path == first.path  # the lock was released: the same file
    finally:
        again.close()
