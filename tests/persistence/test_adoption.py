"""A server adopts a dead replica's fallback file, and only that (`adoption.py`).

Real managers on a PostgreSQL cluster of the test's own (stopped and started by the
test): a survivor holds `fb.sqlite`, a second manager `fb-2.sqlite`; the database
goes down, the second takes writes on its file and goes away, and the survivor
must copy them into PostgreSQL, read there directly, while leaving alone a live
process's file and another database's.
"""

from __future__ import annotations

import asyncio
import logging
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
from tests.replicas.test_durable_fallback import OwnPostgres, own_pg

__all__ = ["own_pg"]  # the fixture, used by name below

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
