"""A server adopts a dead replica's fallback file, and only that (`adoption.py`).

Real managers on a PostgreSQL cluster of the test's own (stopped and started by the
test): a survivor holds `fb.sqlite`, a second manager `fb-2.sqlite`; the database
goes down, the second takes writes on its file and goes away, and the survivor
must copy them into PostgreSQL, read there directly, while leaving alone a live
process's file and another database's. What adopting costs the others: a replica
restarted in the outage still resumes its own file, an entry the survivor cannot read
stays in the file, and an adoption that cannot open its router lets the file go.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.config import create_postgres_checkpointer
from code_hero.persistence.entries import DeleteThread
from code_hero.persistence.journal import Journal
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.outagefile import OutageFile
from tests.replicas.test_durable_fallback import OwnPostgres, own_cluster, own_pg

__all__ = ["own_cluster", "own_pg"]  # the fixtures, used by name below

pytestmark = pytest.mark.postgres


def _manager(pg: OwnPostgres, folder: Path) -> EnhancedCheckpointerManager:
    config = create_postgres_checkpointer(
        pg.url, fallback_path=str(folder / "fb.sqlite"), health_check_interval=0.2, pool_timeout=1
    )
    return EnhancedCheckpointerManager(config)


async def _dies_in_an_outage(pg: OwnPostgres, dead: EnhancedCheckpointerManager) -> None:
    """The database goes down; `dead` takes a thread's writes on its file, and goes away
    (its file as it was: nothing copied back)."""
    pg.stop()
    while dead.overall_status == "healthy":
        await dead.probe_health()
    saver = dead.get_checkpointer()
    config: Any = {"configurable": {"thread_id": "left-by-the-dead", "checkpoint_ns": ""}}
    for i in range(5):
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"x": i}
        checkpoint["channel_versions"] = {"x": str(i + 1)}
        config = await saver.aput(config, checkpoint, {"step": i}, {"x": str(i + 1)})
    assert dead.pending_sync >= 5
    await dead.cleanup()


async def _a_replica_dies_in_an_outage(pg: OwnPostgres, folder: Path) -> Path:
    """A replica starts beside the survivors (it takes the next free name), then dies in
    an outage with a thread's writes on its file (`_dies_in_an_outage`); its file."""
    dead = _manager(pg, folder)
    await dead.initialize()
    assert dead.router.store is not None
    taken = dead.router.store.path
    await _dies_in_an_outage(pg, dead)
    return taken


async def _until(survivor: EnhancedCheckpointerManager, condition: Any) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "not adopted in time"
        await survivor.probe_health()  # looks for files to adopt, in the background
        await asyncio.sleep(0.05)


def _entries(journal: Path) -> int:
    conn = sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True)
    try:
        [(count,)] = conn.execute("SELECT count(*) FROM entries").fetchall()
    finally:
        conn.close()
    return int(count)


def _in_postgres(pg: OwnPostgres) -> int:
    [(count,)] = pg.rows("SELECT count(*) FROM checkpoints WHERE thread_id = 'left-by-the-dead'")
    return int(count)


def test_a_file_left_in_an_outage_is_adopted_once_the_database_is_back(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    dead_file = tmp_path / "fb-2.sqlite"

    async def scenario() -> None:
        async with _manager(own_pg, tmp_path) as survivor:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            assert survivor.adoptions is not None
            adoptions = survivor.adoptions
            # Not while the database is down (the dead one may be restarted and take
            # its file back): the writes wait in the file, which stays free.
            for _ in range(10):
                await survivor.probe_health()
                await asyncio.sleep(0.05)
            assert not adoptions.adopted
            assert _entries(dead_file.with_name(dead_file.name + ".entries")) >= 5
            own_pg.start()
            await _until(survivor, lambda: _in_postgres(own_pg) == 5)
            await _until(survivor, lambda: dead_file not in adoptions.adopted)
            # Given back: empty, and free for a later server (the survivor holds fb).
            later = OutageFile.claim(str(tmp_path / "fb.sqlite"), own_pg.url)
            try:
                assert later.data_path == str(dead_file)
                assert later.load().empty
            finally:
                later.close()

    asyncio.run(scenario())


def test_a_live_replicas_file_and_another_databases_are_left_alone(
    own_pg: OwnPostgres, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING)
    # fb-3: another database's outage, its process gone; fb-4: a live process's.
    foreign = OutageFile.claim(str(tmp_path / "fb-3.sqlite"), "postgresql://db.elsewhere/other")
    foreign_journal = Journal(100)
    foreign_journal.attach(foreign, {})
    foreign_journal.append(DeleteThread("another-databases"))
    foreign.close()
    live = OutageFile.claim(str(tmp_path / "fb-4.sqlite"), own_pg.url)
    live_journal = Journal(100)
    live_journal.attach(live, {})
    live_journal.append(DeleteThread("a-live-replicas"))
    dead_file = tmp_path / "fb-2.sqlite"

    async def scenario() -> None:
        async with _manager(own_pg, tmp_path) as survivor:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            own_pg.start()
            await _until(survivor, lambda: _in_postgres(own_pg) == 5)
            adoptions = survivor.adoptions
            assert adoptions is not None
            await _until(survivor, lambda: dead_file not in adoptions.adopted)

    try:
        asyncio.run(scenario())
        # The live one's file is its own still: its entry there, and it writes on.
        assert live.counts() == (1, 1)
        live_journal.append(DeleteThread("after"))
        assert live.counts() == (2, 2)
    finally:
        live.close()
    assert _entries(tmp_path / "fb-3.sqlite.entries") == 1  # another database's: kept
    assert "fb-3.sqlite is not adopted" in caplog.text
    assert "another database" in caplog.text
    assert "fb-4.sqlite" not in caplog.text


def test_of_two_survivors_one_adopts_the_file(
    own_pg: OwnPostgres, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING)
    dead_file = tmp_path / "fb-3.sqlite"

    async def scenario() -> None:
        async with _manager(own_pg, tmp_path) as one, _manager(own_pg, tmp_path) as other:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            own_pg.start()

            def copied() -> bool:
                adoptions = [one.adoptions, other.adoptions]
                return _in_postgres(own_pg) == 5 and not any(
                    a is not None and a.adopted for a in adoptions
                )

            deadline = time.monotonic() + 30
            while not copied():  # both look, at each probe
                assert time.monotonic() < deadline, "not adopted in time"
                await one.probe_health()
                await other.probe_health()
                await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert caplog.text.count(f"adopting the fallback file {dead_file} ") == 1
    assert caplog.text.count(f"adopted fallback file {dead_file}:") == 1


THREAD: Any = {"configurable": {"thread_id": "left-by-the-dead", "checkpoint_ns": ""}}


def test_a_replica_restarted_in_the_outage_still_resumes_its_own_file(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    """The dead replica is started again (systemd Restart=, a pod's restart) while the
    database is still down. Before adoption it took its file back and served its
    threads from it, resuming the outage whole (README: "a restarted server takes first
    a free file in which a dead one left writes"). A survivor that adopted the file at
    its last probe holds it for the rest of the outage and serves nobody from it: the
    restarted replica takes an empty name, and the thread it wrote a second ago reads as
    missing (its runs in flight wait for the database) until the database is back."""
    dead_file = tmp_path / "fb-2.sqlite"

    async def scenario() -> None:
        async with _manager(own_pg, tmp_path) as survivor:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            adoptions = survivor.adoptions
            assert adoptions is not None
            # The survivor's probes before the restart (it adopted the file in the
            # outage, at the first of them, before the fix).
            for _ in range(10):
                await survivor.probe_health()
                await asyncio.sleep(0.05)
            assert dead_file not in adoptions.adopted
            async with _manager(own_pg, tmp_path) as restarted:
                assert restarted.router.store is not None
                found = await restarted.get_checkpointer().aget_tuple(THREAD)
                assert found is not None and found.checkpoint["channel_values"] == {"x": 4}
                assert restarted.router.store.path == dead_file
            own_pg.start()

    asyncio.run(scenario())


def test_an_entry_the_survivor_cannot_read_stays_in_the_adopted_file(
    own_pg: OwnPostgres, tmp_path: Path, caplog: Any
) -> None:
    """The dead replica ran a newer version (a rolling upgrade): one of its entries is of
    an entry class this one does not know. The survivor holds it ("kept and retried",
    README) and, stopped before it can read it, says it waits in the file for the next
    server. But the switch back emptied the file of every entry once the journal's
    readable ones were in (`tidy_fallback`'s `clear_entries`: held ones are not in the
    journal's count): the next server, of the new version, finds nothing, and the write
    is lost."""
    caplog.set_level(logging.WARNING)
    dead_file = tmp_path / "fb-2.sqlite"
    journal = tmp_path / "fb-2.sqlite.entries"

    async def scenario() -> None:
        async with _manager(own_pg, tmp_path) as survivor:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            with sqlite3.connect(journal) as conn:  # a newer version's entry, after them
                conn.execute(
                    "INSERT INTO entries (thread_id, body) VALUES (?, ?)",
                    ("newer", pickle.dumps(("DeleteThread", {"thread_id": "newer", "gone": 1}))),
                )
            conn.close()
            own_pg.start()
            await _until(survivor, lambda: _in_postgres(own_pg) == 5)
            adoptions = survivor.adoptions
            assert adoptions is not None
            await _until(survivor, lambda: adoptions.waiting.get(dead_file) == 1)
            if adoptions._task is not None:  # the round under way ends: its switch back
                await adoptions._task
        # Stopped: "closing with the adopted fallback file ... not copied back".
        assert "wait in it for the next server" in caplog.text

    asyncio.run(scenario())
    assert _entries(journal) == 1, "the entry the survivor could not read is gone"


def test_an_adoption_that_cannot_open_its_router_lets_the_file_go(
    own_pg: OwnPostgres, tmp_path: Path, monkeypatch: Any, caplog: Any
) -> None:
    """Making the adopted file's router failed (here: refused outright) after the look
    had locked the file: the lock stayed the process's for good, and no later look,
    nor another server, could adopt the file. Now it is released, and the failure
    logged once however many probes see it."""
    from code_hero.persistence import adoption
    from code_hero.persistence.outagefile import OutageFile

    dead_file = tmp_path / "fb-2.sqlite"
    tries = 0

    def refused(config: Any, store: Any) -> Any:
        nonlocal tries
        tries += 1
        raise RuntimeError("no router today")

    async def scenario() -> None:
        async with _manager(own_pg, tmp_path) as survivor:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            monkeypatch.setattr(adoption, "_router_for", refused)
            own_pg.start()
            await _until(survivor, lambda: tries >= 3)  # each probe looks again
            adoptions = survivor.adoptions
            assert adoptions is not None and not adoptions.adopted
            if adoptions._task is not None:
                await adoptions._task
            # Free: another server's look takes it.
            found = OutageFile.orphan(dead_file, own_pg.url)
            assert found is not None
            found.close()

    caplog.set_level(logging.WARNING, logger="code_hero.persistence.adoption")
    asyncio.run(scenario())
    failed = [r for r in caplog.records if "failed: tried again later" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]
