"""Review of adopt2 (`git diff 54691a2..11bbc6d`): what `health` and `/metrics` say while
an adopted file is released off the event loop, and a stop cut short while an adopted
file's journal is still being read.

Real managers on a PostgreSQL cluster of the test's own, as in `test_adoption_health.py`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from code_hero.persistence.journal import Journal
from code_hero.persistence.outagefile import OutageFile
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


def test_a_copied_file_shows_nothing_waiting_while_it_is_released(
    own_pg: OwnPostgres, tmp_path: Path, monkeypatch: Any
) -> None:
    """Its writes are all in the database and the file emptied; its journal is closed on
    a thread (`FallbackRouter.close`). Meanwhile `health` and `code_hero_adopted_pending_sync`
    said the file held again the writes it held when adopted (`Adoptions.files` takes
    `journal.store is None` for "not read yet")."""
    dead_file = tmp_path / "fb-2.sqlite"
    closing = threading.Event()
    go_on = threading.Event()
    close = OutageFile.close
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []  # on the loop: as it closes
    live: list[Any] = []

    def held(store: OutageFile) -> None:
        if store.path == dead_file and live:
            if threading.current_thread() is threading.main_thread():  # closed on the loop
                seen.append((live[0].health_report(), live[0].metrics_snapshot()))
            else:  # on a thread: the loop answers meanwhile
                closing.set()
                go_on.wait(30)
        close(store)

    async def scenario() -> None:
        async with _manager(own_pg, tmp_path) as survivor:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            monkeypatch.setattr(OutageFile, "close", held)
            live.append(survivor)
            own_pg.start()
            adoptions = survivor.adoptions
            assert adoptions is not None
            try:
                await _until(survivor, lambda: closing.is_set() or bool(seen))  # closing
                assert _in_postgres(own_pg) == 5
                report, metrics = (
                    seen[0] if seen else (survivor.health_report(), survivor.metrics_snapshot())
                )
            finally:
                go_on.set()
            waiting = [a["pending_sync"] for a in report["adoptions"]]
            assert sum(waiting) == 0, report["adoptions"]
            assert metrics["adopted_pending_sync"] == 0, metrics
            await _until(survivor, lambda: dead_file not in adoptions.adopted)

    asyncio.run(scenario())


def test_a_stop_while_an_adopted_file_is_read_names_what_waits_in_it(
    own_pg: OwnPostgres, tmp_path: Path, monkeypatch: Any, caplog: Any
) -> None:
    """The stop comes as the adopted file's journal is read (`FallbackRouter.open`'s attach,
    on a thread: a large file, past the grace). `_adopt` keeps the router adopted on a
    cancel "for `close` to release and to name with what waits in it", and the README
    says a WARNING names a file released with what was not copied; but nothing is loaded
    yet, so `close` counts 0 writes and says nothing of the file."""
    caplog.set_level(logging.WARNING)
    dead_file = tmp_path / "fb-2.sqlite"
    reading = threading.Event()
    go_on = threading.Event()
    attach = Journal.attach

    def slow(journal: Journal, store: OutageFile, copied: dict[str, int]) -> Any:
        if store.path == dead_file:
            reading.set()
            go_on.wait(30)
        return attach(journal, store, copied)

    async def scenario() -> None:
        survivor = _manager(own_pg, tmp_path)
        await survivor.initialize()
        try:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            monkeypatch.setattr(Journal, "attach", slow)
            own_pg.start()
            await _until(survivor, reading.is_set)
            caplog.clear()
            await survivor.settle(0.2)
        finally:
            try:
                await asyncio.wait_for(survivor.cleanup(), 30)  # 30: only against a hang
            finally:
                go_on.set()

    asyncio.run(scenario())
    assert _entries(tmp_path / "fb-2.sqlite.entries") >= 5  # left for the next server
    lines = [r.getMessage() for r in caplog.records]
    assert any(str(dead_file) in line and "next server" in line for line in lines), lines
