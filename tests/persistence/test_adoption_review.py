"""Review of adoption (`adoption.py`): what a live server's adopting costs the others.

Real managers on a PostgreSQL cluster of the test's own (stopped and started by the
test), as in `test_adoption.py`: a survivor holds `fb.sqlite`, a replica `fb-2.sqlite`
that dies in an outage with a thread's writes on its file.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.persistence.test_adoption import (
    _a_replica_dies_in_an_outage,
    _entries,
    _in_postgres,
    _manager,
    _until,
)
from tests.replicas.test_durable_fallback import OwnPostgres, own_pg

__all__ = ["own_pg"]  # the fixture, used by name below

pytestmark = pytest.mark.postgres

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
