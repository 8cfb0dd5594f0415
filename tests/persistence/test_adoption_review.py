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
    _dies_in_an_outage,
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
            dead = _manager(own_pg, tmp_path)
            await dead.initialize()
            assert dead.router.store is not None
            assert dead.router.store.path == dead_file
            await _dies_in_an_outage(own_pg, dead)
            adoptions = survivor.adoptions
            assert adoptions is not None
            # The survivor's next probe, before the restart: adopted in the outage.
            await _until(survivor, lambda: adoptions.waiting.get(dead_file, 0) >= 5)
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
            dead = _manager(own_pg, tmp_path)
            await dead.initialize()
            await _dies_in_an_outage(own_pg, dead)
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
