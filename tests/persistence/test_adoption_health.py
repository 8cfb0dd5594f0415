"""What an adoption shows and how a stop ends it (`adoption.py`): `health`, `/metrics`,
its log lines (also while a copied file is released off the event loop), and a graceful
stop while an adopted file's writes are copied or its journal is still being read.

Real managers on a PostgreSQL cluster of the test's own, as in `test_adoption.py`: a
survivor holds `fb.sqlite`, a replica `fb-2.sqlite` that dies in an outage with a
thread's writes on its file. The adopted router's copy-back is held at a gate
(`_held_copy`) where a test must see it under way.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from code_hero.persistence import adoption
from code_hero.persistence.diagnosis import public_health
from code_hero.persistence.journal import Journal
from code_hero.persistence.outagefile import OutageFile
from tests.persistence.test_adoption import (
    _a_replica_dies_in_an_outage,
    _entries,
    _in_postgres,
    _manager,
    _until,
)
from tests.replicas.test_durable_fallback import OwnPostgres, own_cluster, own_pg

__all__ = ["own_cluster", "own_pg"]  # the fixtures, used by name below

pytestmark = pytest.mark.postgres


def _as_graphql(report: dict[str, Any]) -> Any:
    """The report as the GraphQL `health` gives it."""
    # The schema first: the resolvers' mapping, imported first, meets the schema's
    # import of it half made.
    importlib.import_module("code_hero.schema")
    return importlib.import_module("code_hero.resolvers.mapping").health_of(report)


def _held_copy(monkeypatch: Any, gate: asyncio.Event) -> None:
    """Adopted routers copy their file into the database only once `gate` is set."""
    make = adoption._router_for

    def held(config: Any, store: Any) -> Any:
        router = make(config, store)
        recover = router.recover

        async def after_the_gate() -> bool:
            await gate.wait()
            return await recover()

        router.recover = after_the_gate
        return router

    monkeypatch.setattr(adoption, "_router_for", held)


def test_health_and_metrics_show_the_adopted_file_and_how_it_ended(
    own_pg: OwnPostgres, tmp_path: Path, monkeypatch: Any
) -> None:
    dead_file = tmp_path / "fb-2.sqlite"

    async def scenario() -> None:
        gate = asyncio.Event()
        async with _manager(own_pg, tmp_path) as survivor:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            assert survivor.health_report()["adoptions"] == []
            assert survivor.health_report()["last_adoption"] is None
            _held_copy(monkeypatch, gate)
            own_pg.start()
            adoptions = survivor.adoptions
            assert adoptions is not None
            await _until(survivor, lambda: dead_file in adoptions.adopted)

            report = survivor.health_report()
            [adopted] = report["adoptions"]
            assert adopted["file"] == str(dead_file)
            assert adopted["pending_sync"] >= 5 and adopted["quarantined"] == 0
            assert report["pending_sync"] == 0  # the survivor's own outage: none left
            [shown] = _as_graphql(report).adoptions  # as the GraphQL `health` gives it
            assert shown.file == str(dead_file) and shown.pending_sync >= 5
            [public] = public_health(report)["adoptions"]  # no path for anyone else
            assert public["file"] is None and public["pending_sync"] >= 5
            metrics = survivor.metrics_snapshot()
            assert metrics["adopted_files"] == 1 and metrics["adopted_pending_sync"] >= 5

            gate.set()
            await _until(survivor, lambda: dead_file not in adoptions.adopted)
            report = survivor.health_report()
            assert report["adoptions"] == []
            last = report["last_adoption"]
            assert last["file"] == str(dead_file) and last["error"] is None
            assert last["writes"] >= 5 and last["threads"] == 1
            last_shown = _as_graphql(report).last_adoption
            assert last_shown is not None and last_shown.error is None
            metrics = survivor.metrics_snapshot()
            assert metrics["adopted_files"] == 0 and metrics["adoptions_copied"] == 1
            assert _in_postgres(own_pg) == 5

    asyncio.run(scenario())


def test_health_says_why_the_last_adoption_failed(
    own_pg: OwnPostgres, tmp_path: Path, monkeypatch: Any
) -> None:
    dead_file = tmp_path / "fb-2.sqlite"

    def refused(config: Any, store: Any) -> Any:
        raise RuntimeError("no router today")

    async def scenario() -> None:
        async with _manager(own_pg, tmp_path) as survivor:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            monkeypatch.setattr(adoption, "_router_for", refused)
            own_pg.start()
            await _until(survivor, lambda: survivor.health_report()["last_adoption"] is not None)
            last = survivor.health_report()["last_adoption"]
            assert last["file"] == str(dead_file)
            assert last["error"] == "RuntimeError: no router today"
            public = public_health(survivor.health_report())["last_adoption"]
            assert public["file"] is None and public["error"] == "unavailable"
            assert survivor.metrics_snapshot()["adoption_failures"] == 1

    asyncio.run(scenario())


def test_a_stop_lets_the_copy_of_an_adopted_file_finish_within_the_grace(
    own_pg: OwnPostgres, tmp_path: Path, monkeypatch: Any
) -> None:
    """The survivor is told to stop (SIGTERM: `settle`, then `cleanup`) as it adopts the
    file. The copy was cancelled at once: the file kept every write for a next server,
    and a scaled-down service may not start one for a long while."""
    dead_file = tmp_path / "fb-2.sqlite"

    async def scenario() -> None:
        gate = asyncio.Event()
        survivor = _manager(own_pg, tmp_path)
        await survivor.initialize()
        try:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            _held_copy(monkeypatch, gate)
            own_pg.start()
            adoptions = survivor.adoptions
            assert adoptions is not None
            await _until(survivor, lambda: dead_file in adoptions.adopted)
            asyncio.get_running_loop().call_later(0.3, gate.set)  # the copy goes on
            await survivor.settle(30)
        finally:
            await survivor.cleanup()

    asyncio.run(scenario())
    assert _in_postgres(own_pg) == 5
    assert _entries(tmp_path / "fb-2.sqlite.entries") == 0
    found = OutageFile.orphan(dead_file, own_pg.url)  # released, and nothing left to adopt
    assert found is None


def test_a_stop_past_the_grace_releases_the_adopted_file_whole(
    own_pg: OwnPostgres, tmp_path: Path, monkeypatch: Any, caplog: Any
) -> None:
    """The copy does not end within the grace: the stop ends all the same, the file's
    lock released and its writes in it, and the next server copies them."""
    caplog.set_level(logging.WARNING)
    dead_file = tmp_path / "fb-2.sqlite"

    async def stopped_past_the_grace() -> None:
        never = asyncio.Event()
        survivor = _manager(own_pg, tmp_path)
        await survivor.initialize()
        try:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            _held_copy(monkeypatch, never)
            own_pg.start()
            adoptions = survivor.adoptions
            assert adoptions is not None
            await _until(survivor, lambda: dead_file in adoptions.adopted)
            await asyncio.wait_for(survivor.settle(0.2), 30)  # 30: only against a hang
        finally:
            await asyncio.wait_for(survivor.cleanup(), 30)

    asyncio.run(stopped_past_the_grace())
    assert "wait in it for the next server" in caplog.text
    assert _in_postgres(own_pg) == 0
    assert _entries(tmp_path / "fb-2.sqlite.entries") >= 5
    monkeypatch.undo()

    async def the_next_server() -> None:
        async with _manager(own_pg, tmp_path) as later:
            await _until(later, lambda: _in_postgres(own_pg) == 5)

    asyncio.run(the_next_server())


def test_an_adopted_files_router_logs_as_what_it_is(
    own_pg: OwnPostgres, tmp_path: Path, caplog: Any
) -> None:
    """The adopted router said what a server's own router says of its outage: "resuming
    the outage a previous process left", and "primary backend ... serves again", as if
    this server had had a second outage, though it serves nobody from that file."""
    caplog.set_level(logging.WARNING)
    dead_file = tmp_path / "fb-2.sqlite"

    async def scenario() -> None:
        async with _manager(own_pg, tmp_path) as survivor:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            await _until(survivor, lambda: survivor.overall_status == "degraded")
            caplog.clear()  # the dead replica's own lines, the survivor's outage's start
            own_pg.start()
            adoptions = survivor.adoptions
            assert adoptions is not None
            await _until(survivor, lambda: _in_postgres(own_pg) == 5)
            await _until(survivor, lambda: dead_file not in adoptions.adopted)

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    assert sum("serves again" in line for line in lines) == 1, lines  # the survivor's own
    assert not any("resuming the outage" in line for line in lines), lines
    assert sum(str(dead_file) in line for line in lines) == 2, lines  # adopting, adopted


def test_an_adopted_file_whose_database_does_not_answer_serves_nobody(
    own_pg: OwnPostgres, tmp_path: Path, monkeypatch: Any, caplog: Any
) -> None:
    """The database stops answering the adopted router as it opens (here: its pool is
    pointed at a port nobody listens on): it said "serving from fallback:sqlite"."""
    caplog.set_level(logging.WARNING)
    dead_file = tmp_path / "fb-2.sqlite"
    make = adoption._router_for

    def elsewhere(config: Any, store: Any) -> Any:
        gone = own_pg.url.replace(f":{own_pg.port}/", ":1/")
        return make(config.with_options(connection_string=gone), store)

    async def scenario() -> None:
        async with _manager(own_pg, tmp_path) as survivor:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            monkeypatch.setattr(adoption, "_router_for", elsewhere)
            caplog.clear()
            own_pg.start()
            adoptions = survivor.adoptions
            assert adoptions is not None
            # Held as its router opens; its error is shown once the database refused that
            # router (a report made in between has none yet: a CI run saw it).
            await _until(survivor, lambda: dead_file in adoptions.adopted)
            await _until(
                survivor,
                lambda: any(a["last_error"] for a in survivor.health_report()["adoptions"]),
            )
            [adopted] = survivor.health_report()["adoptions"]
            assert adopted["pending_sync"] >= 5
            # Wait for the open's line rather than stop the survivor, which would cut the
            # open short.
            await _until(survivor, lambda: said(f"adopted fallback file {dead_file}: the database"))

    def said(text: str) -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    assert not any("serving from" in line for line in lines), lines


def test_the_adopted_files_release_is_off_the_event_loop(
    own_pg: OwnPostgres, tmp_path: Path, monkeypatch: Any
) -> None:
    """Closing an adopted file's journal (its last connection checkpoints the WAL into
    the file: 16-66 ms measured, `bench/adoption.py`) ran on the loop, every request
    of the live server waiting behind it."""
    dead_file = tmp_path / "fb-2.sqlite"
    closed_on: list[threading.Thread] = []
    close = OutageFile.close

    def watched(store: OutageFile) -> None:
        if store.path == dead_file:
            closed_on.append(threading.current_thread())
        close(store)

    async def scenario() -> None:
        async with _manager(own_pg, tmp_path) as survivor:
            assert await _a_replica_dies_in_an_outage(own_pg, tmp_path) == dead_file
            closed_on.clear()  # the dead replica's own close
            monkeypatch.setattr(OutageFile, "close", watched)
            own_pg.start()
            adoptions = survivor.adoptions
            assert adoptions is not None
            await _until(survivor, lambda: _in_postgres(own_pg) == 5)
            await _until(survivor, lambda: dead_file not in adoptions.adopted)
            assert closed_on and threading.current_thread() not in closed_on

    asyncio.run(scenario())


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
