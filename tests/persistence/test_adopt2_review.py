"""Review of adopt2 (`git diff 54691a2..11bbc6d`): what `health` and `/metrics` say while
an adopted file is released off the event loop, and a stop cut short while an adopted
file's journal is still being read.

Real managers on a PostgreSQL cluster of the test's own, as in `test_adoption_health.py`.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from code_hero.persistence.outagefile import OutageFile
from tests.persistence.test_adoption import (
    _a_replica_dies_in_an_outage,
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
