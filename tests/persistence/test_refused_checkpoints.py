"""A run whose checkpoint PostgreSQL refuses at the copy-back ends ERROR there.

The checkpoint is quarantined (kept, retried, never going in: a value the
database cannot store), so the thread in PostgreSQL lacks the state the run
ended with; a SUCCESS recorded beside it would be a run whose result is not
where it says. On a healthy database that write fails the run; after an outage
the run's end goes in ERROR, saying which write was refused and why, unless a
newer checkpoint of its thread went in (a run that went on after the switch back:
the refused one is history, and the run keeps its end).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest

from code_hero.auth import ANONYMOUS
from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.entries import PutCheckpoint, PutWrites
from code_hero.persistence.records import RunStatus, ThreadStatus
from code_hero.runs.executor import RunExecutor, StartRun
from tests.faults import held_writes, until
from tests.persistence.proxied import NUL_SPEC, SLOW_SPEC, behind_a_proxy, degraded, synced

pytestmark = pytest.mark.postgres


def _rows(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql, params).fetchall())


def _refusing(
    monkeypatch: pytest.MonkeyPatch,
    backend: Any,
    run_id: str,
    which: Callable[[PutCheckpoint], bool] = lambda item: True,
) -> None:
    """PostgreSQL refuses the checkpoints the run wrote (`which` of them: all by
    default), as values it cannot store."""

    def refused(item: PutCheckpoint | PutWrites) -> bool:
        return (
            isinstance(item, PutCheckpoint)
            and item.config["configurable"].get("run_id") == run_id
            and which(item)
        )

    put_batch, replay = backend.put_batch, PutCheckpoint.replay

    async def batch(items: Sequence[PutCheckpoint | PutWrites]) -> None:
        if any(refused(i) for i in items):
            raise psycopg.DataError("injected: a value PostgreSQL cannot store")
        await put_batch(items)

    async def one(self: PutCheckpoint, primary: Any, fallback: Any) -> None:
        if refused(self):
            raise psycopg.DataError("injected: a value PostgreSQL cannot store")
        await replay(self, primary, fallback)

    monkeypatch.setattr(backend, "put_batch", batch)
    monkeypatch.setattr(PutCheckpoint, "replay", one)


async def test_a_run_in_flight_across_an_outage_whose_checkpoint_is_refused_ends_error(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with behind_a_proxy(pg_database) as (gw, proxy):
        run = await gw.start_run(StartRun(graph="slow", input={"delay": 0.3}))

        async def checkpointed() -> bool:
            latest = await gw.get_checkpoint(run.thread_id)
            return latest is not None and bool(latest.values.get("steps"))

        await until(checkpointed)  # a step is in PostgreSQL: the run is from before
        proxy.refuse()
        await until(lambda: degraded(gw))

        async def ended() -> bool:
            found = await gw.get_run(run.run_id)
            return found is not None and found.status.finished

        await until(ended)
        told = await gw.get_run(run.run_id)
        assert told is not None and told.status is RunStatus.SUCCESS  # on the fallback
        primary = gw.manager.router.primary.backend
        assert primary is not None
        _refusing(monkeypatch, primary, run.run_id)
        proxy.forward()
        await until(lambda: synced(gw))
        assert (await gw.health())["quarantined"] >= 1
        stored = _rows(
            pg_database,
            "SELECT r.status, r.error, t.status FROM code_hero_runs r JOIN code_hero_threads t "
            "USING (thread_id) WHERE run_id = %s",
            run.run_id,
        )
        assert len(stored) == 1
        status, error, thread_status = stored[0]
        assert (status, thread_status) == ("ERROR", ThreadStatus.ERROR.value)
        assert "ended SUCCESS" in error and "injected" in error
        after = await gw.get_run(run.run_id)
        assert after is not None and after.status is RunStatus.ERROR


async def test_a_run_ended_in_the_outage_keeps_its_end_when_only_an_older_checkpoint_is_refused(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One checkpoint half-way through is refused; the ones after it, the last with the
    # state the run ended with, go in: the refused one is history, and its SUCCESS,
    # copied back with the thread, stands.
    async with behind_a_proxy(pg_database) as (gw, proxy):
        router = gw.manager.router
        proxy.refuse()
        await until(lambda: degraded(gw))
        run = await gw.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
        assert run.status is RunStatus.SUCCESS
        primary = router.primary.backend
        assert primary is not None
        _refusing(monkeypatch, primary, run.run_id, lambda item: item.metadata["step"] == 2)
        proxy.forward()
        await until(lambda: synced(gw))
        assert len(router.journal.quarantine) == 1
        assert run.run_id in router.journal.refused_runs
        stored = _rows(
            pg_database,
            "SELECT r.status, r.error, t.status FROM code_hero_runs r JOIN code_hero_threads t "
            "USING (thread_id) WHERE run_id = %s",
            run.run_id,
        )
        assert stored == [("SUCCESS", None, ThreadStatus.IDLE.value)]
        latest = await gw.get_checkpoint(run.thread_id)
        assert latest is not None and len(latest.values["steps"]) == 6


async def _ended(gw: Gateway, run_id: str) -> bool:
    found = await gw.get_run(run_id)
    return found is not None and found.status.finished


async def _told(gw: Gateway, run_id: str) -> list[str]:
    """The statuses the run's events told, in order."""
    events = await gw.run_events(run_id, first=1000)
    return [str(e.payload["status"]) for e in events if "status" in e.payload]


async def test_a_run_ending_after_the_switch_back_on_newer_checkpoints_keeps_its_end(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Born in the outage and still running when the copy-back refused its checkpoints;
    # it goes on after the switch back and stores newer ones in PostgreSQL: the
    # refused ones are history, and its SUCCESS stands. It was stored ERROR "while the
    # database was unreachable", beside its events' SUCCESS.
    async with behind_a_proxy(pg_database) as (gw, proxy):
        router = gw.manager.router
        proxy.refuse()
        await until(lambda: degraded(gw))
        run = await gw.start_run(StartRun(graph="slow", input={"delay": 0.05}))

        async def checkpointed() -> bool:
            latest = await gw.get_checkpoint(run.thread_id)
            return latest is not None and len(latest.values.get("steps", [])) >= 2

        await until(checkpointed)
        reached, go_on = held_writes(monkeypatch, router, lambda t: t == run.thread_id)
        await asyncio.wait_for(reached.wait(), 30)  # the run waits at its next step
        primary = router.primary.backend
        assert primary is not None
        _refusing(monkeypatch, primary, run.run_id)
        proxy.forward()
        await until(lambda: synced(gw))
        assert run.run_id in router.journal.refused_runs
        found = await gw.get_run(run.run_id)
        assert found is not None and not found.status.finished
        go_on.set()
        await until(lambda: _ended(gw, run.run_id))
        after = await gw.get_run(run.run_id)
        assert after is not None and after.status is RunStatus.SUCCESS, after.error
        assert (await _told(gw, run.run_id))[-1] == RunStatus.SUCCESS.value
        latest = await gw.get_checkpoint(run.thread_id)
        assert latest is not None and len(latest.values["steps"]) == 6  # every step
        stored = _rows(
            pg_database,
            "SELECT r.status, t.status FROM code_hero_runs r JOIN code_hero_threads t "
            "USING (thread_id) WHERE run_id = %s",
            run.run_id,
        )
        assert stored == [("SUCCESS", ThreadStatus.IDLE.value)]


async def test_a_run_ending_after_the_switch_back_on_its_refused_checkpoint_ends_error(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its last checkpoint was written in the outage and refused at the copy-back; its
    # end comes after the switch back, on PostgreSQL, which holds nothing newer: ERROR,
    # decided before the end is told (events, waiters and row agree).
    async with behind_a_proxy(pg_database) as (gw, proxy):
        router = gw.manager.router
        streamed, go_on = asyncio.Event(), asyncio.Event()
        stream = RunExecutor._stream

        async def held(self: RunExecutor, *args: Any, **kw: Any) -> Any:
            ended = await stream(self, *args, **kw)
            streamed.set()  # every checkpoint written, the end not decided yet
            await go_on.wait()
            return ended

        monkeypatch.setattr(RunExecutor, "_stream", held)
        proxy.refuse()
        await until(lambda: degraded(gw))
        run = await gw.start_run(StartRun(graph="slow", input={"delay": 0}))
        await asyncio.wait_for(streamed.wait(), 30)
        primary = router.primary.backend
        assert primary is not None
        _refusing(monkeypatch, primary, run.run_id)
        proxy.forward()
        await until(lambda: synced(gw))
        assert run.run_id in router.journal.refused_runs
        go_on.set()
        await until(lambda: _ended(gw, run.run_id))
        after = await gw.get_run(run.run_id)
        assert after is not None and after.status is RunStatus.ERROR
        assert "ended SUCCESS after the database came back" in (after.error or "")
        assert "injected" in (after.error or "")
        assert (await _told(gw, run.run_id))[-1] == RunStatus.ERROR.value
        stored = _rows(
            pg_database,
            "SELECT r.status, t.status FROM code_hero_runs r JOIN code_hero_threads t "
            "USING (thread_id) WHERE run_id = %s",
            run.run_id,
        )
        assert stored == [("ERROR", ThreadStatus.ERROR.value)]


async def test_a_refusal_is_forgotten_once_another_replica_deletes_the_thread(
    pg_database: str,
) -> None:
    # The retry drops the quarantined checkpoint of a thread deleted meanwhile; the
    # run stayed named among the refused for the process's life.
    async with behind_a_proxy(pg_database) as (gw, proxy):
        router = gw.manager.router
        proxy.refuse()
        await until(lambda: degraded(gw))
        run = await gw.start_run(StartRun(graph="nul", input={}, wait=True))
        proxy.forward()
        await until(lambda: synced(gw))
        journal = router.journal
        assert run.run_id in journal.refused_runs
        assert len(journal.quarantine) == 1
        assert gw.internal_sizes()["journal.refused_runs"] == 1
        other_settings = GatewaySettings(
            checkpointer=create_postgres_checkpointer(pg_database),
            graphs={"slow": SLOW_SPEC, "nul": NUL_SPEC},
        )
        async with Gateway(other_settings) as other:
            assert (await other.delete_thread(run.thread_id, caller=ANONYMOUS)).deleted
        await router.check()  # the retry drops the quarantined entry: its thread is gone
        assert len(journal.quarantine) == 0
        assert journal.refused_runs == {}
        assert gw.internal_sizes()["journal.refused_runs"] == 0
