"""Closing after an outage: what the fallback held reaches PostgreSQL when it answers.

A server told to stop (SIGTERM, a rolling restart) once the database is back, but
before a probe copied the outage's writes back, must copy them on its way out
instead of dropping them with its memory; a copy cut short (the grace over, the
process killed) must leave no run ended in PostgreSQL without its checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg
import pytest

from code_hero.persistence.entries import PutCheckpoint, PutWrites
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import StartRun
from tests.persistence.proxied import behind_a_proxy

pytestmark = pytest.mark.postgres
STEPS = [f"s{i}" for i in range(6)]


def rows(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql, params).fetchall())


async def test_closing_once_the_database_is_back_copies_what_the_outage_held(
    pg_database: str,
) -> None:
    # No probe comes during the test: the outage is found by the run's own call,
    # and only the closing can copy back.
    async with behind_a_proxy(pg_database, health_check_interval=3600) as (gw, proxy):
        proxy.refuse()
        run = await gw.start_run(StartRun(graph="slow", input={"steps": []}, wait=True))
        assert run.status is RunStatus.SUCCESS
        assert gw.manager.router.degraded_since is not None
        assert gw.manager.pending_sync > 0
        served = [e.seq for e in await gw.run_events(run.run_id, first=1000)]
        history = len((await gw.list_checkpoints(run.thread_id, first=100)).items)
        proxy.forward()  # back, and the server is told to stop before a probe saw it

    stored = rows(
        pg_database,
        "SELECT status, output->'steps' FROM code_hero_runs WHERE run_id = %s",
        run.run_id,
    )
    assert stored == [("SUCCESS", STEPS)]
    events = rows(
        pg_database,
        "SELECT seq FROM code_hero_run_events WHERE run_id = %s ORDER BY seq",
        run.run_id,
    )
    assert [seq for (seq,) in events] == served
    checkpoints = rows(
        pg_database,
        "SELECT count(*) FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ''",
        run.thread_id,
    )
    assert checkpoints == [(history,)]


async def test_a_copy_cut_short_leaves_no_run_ended_without_its_checkpoints(
    pg_database: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with behind_a_proxy(pg_database, health_check_interval=3600) as (gw, proxy):
        proxy.refuse()
        run = await gw.start_run(StartRun(graph="slow", input={"steps": []}, wait=True))
        assert run.status is RunStatus.SUCCESS
        assert (await gw.list_checkpoints(run.thread_id, first=100)).items
        primary = gw.manager.router.primary.backend
        assert primary is not None
        cut: list[int] = []

        async def lost(*args: object) -> None:
            # The connection is lost as the checkpoints go in: the copy stops
            # there, as a stop's grace running out or a crash would stop it.
            cut.append(len(args))
            raise ConnectionResetError("the copy-back was cut short here")

        async def lost_batch(items: Sequence[PutCheckpoint | PutWrites]) -> None:
            await lost(items)

        monkeypatch.setattr(primary, "put_batch", lost_batch)
        monkeypatch.setattr(primary.saver, "aput", lost)
        monkeypatch.setattr(primary.saver, "aput_writes", lost)
        proxy.forward()  # back: the closing copies, and is cut short at the checkpoints

    assert cut  # the copy did reach the checkpoints
    assert any(
        r.levelno == logging.ERROR and "copy-back unfinished" in r.getMessage()
        for r in caplog.records
    )
    stored = rows(pg_database, "SELECT status FROM code_hero_runs WHERE run_id = %s", run.run_id)
    checkpoints = rows(
        pg_database, "SELECT count(*) FROM checkpoints WHERE thread_id = %s", run.thread_id
    )
    # Before: the run went in SUCCESS with its output and every event, no checkpoint.
    assert checkpoints == [(0,)]
    assert stored == []
