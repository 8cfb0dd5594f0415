"""The copy-back's last part holds new writes: a database gone silent then must not hold
them for longer than one step of the copy.

The sync-back drains the outage journal while writes go on, then closes the write
gate for the last few entries and the switch. A database that stops answering (a
frozen host, a partition: no refusal, no reset) exactly then left every writer (a
run's checkpoint, a new run's admission) waiting at the gate while the drain waited
out its steps' bounds in turn and psycopg's own wait on each cancelled query: 12 s
here for a 2 s step, ~40 s with the defaults.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from code_hero.persistence.entries import PutCheckpoint, PutWrites
from code_hero.persistence.records import RunStatus
from code_hero.persistence.recovery import step_timeout
from code_hero.runs.executor import StartRun
from tests.faults import until
from tests.persistence.proxied import behind_a_proxy, degraded, synced

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_database(pg_migrated_database: str) -> str:
    """A database of the test's own with the gateway's tables made (its migrations are
    not what these tests are about)."""
    return pg_migrated_database


async def test_a_database_silent_while_the_gate_is_closed_holds_writers_one_step_at_most(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with behind_a_proxy(pg_database) as (gw, proxy):
        router = gw.manager.router
        proxy.refuse()
        await until(lambda: degraded(gw))
        runs = [
            await gw.start_run(StartRun(graph="slow", input={"steps": []}, wait=True))
            for _ in range(3)
        ]
        gated = asyncio.Event()
        closed = router.gate.closed

        @asynccontextmanager
        async def silenced() -> AsyncIterator[None]:
            async with closed():
                if not gated.is_set():
                    proxy.black_hole()  # silent exactly as the gate shuts
                    gated.set()
                yield

        monkeypatch.setattr(router.gate, "closed", silenced)
        # What happened, in order: the gated part given up on as one call, a writer
        # let through the gate.
        seen: list[str] = []
        run_call, write = router.calls.run, router.gate.write

        async def bounded(call: Any, seconds: float, what: str, **options: Any) -> Any:
            try:
                return await run_call(call, seconds, what, **options)
            except TimeoutError:
                seen.append(f"given up: {what}")
                raise

        @asynccontextmanager
        async def writing() -> AsyncIterator[None]:
            async with write():
                if gated.is_set() and "writer passed" not in seen:
                    seen.append("writer passed")
                yield

        monkeypatch.setattr(router.calls, "run", bounded)
        monkeypatch.setattr(router.gate, "write", writing)
        proxy.forward()
        await asyncio.wait_for(gated.wait(), 30)
        # A run on a new thread needs the gate for its writes: it passes once the
        # gated part (one call, bounded) is given up on, not after each of its steps
        # has timed out in turn and psycopg has waited on each cancelled query.
        during = await asyncio.wait_for(  # a hang guard only
            gw.start_run(StartRun(graph="slow", input={"steps": []}, wait=True)), 120
        )
        assert during.status is RunStatus.SUCCESS
        assert seen[:2] == ["given up: the copy-back's last part", "writer passed"], seen
        assert router.degraded_since is not None  # its writes went to the fallback
        proxy.forward()
        await until(lambda: synced(gw))

    # Nothing was lost by the drain given up on: every event of every run, no gap.
    ids = [r.run_id for r in [*runs, during]]
    with psycopg.connect(pg_database) as conn:
        stored = conn.execute(
            "SELECT r.status, count(e.seq), max(e.seq) "
            "FROM code_hero_runs r JOIN code_hero_run_events e USING (run_id) "
            "WHERE r.run_id = ANY(%s) GROUP BY r.run_id, r.status",
            (ids,),
        ).fetchall()
    assert len(stored) == len(ids)
    assert all(s == "SUCCESS" and n == top for s, n, top in stored), stored


async def test_a_database_slow_while_the_gate_is_closed_is_not_an_outage(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with behind_a_proxy(pg_database) as (gw, proxy):
        router = gw.manager.router
        proxy.refuse()
        await until(lambda: degraded(gw))
        runs = [
            await gw.start_run(StartRun(graph="slow", input={"steps": []}, wait=True))
            for _ in range(3)
        ]
        primary = router.primary.backend
        assert primary is not None
        put_batch, slowed, closed = primary.put_batch, asyncio.Event(), router.gate.closed
        gated = False

        @asynccontextmanager
        async def marked() -> AsyncIterator[None]:
            nonlocal gated
            async with closed():
                gated = True
                try:
                    yield
                finally:
                    gated = False

        async def slow_while_gated(items: Sequence[PutCheckpoint | PutWrites]) -> None:
            if gated:  # the gated part: a lock, a load
                slowed.set()
                await asyncio.sleep(step_timeout(router.primary.config))  # it answers, late
            await put_batch(items)

        monkeypatch.setattr(router.gate, "closed", marked)
        monkeypatch.setattr(primary, "put_batch", slow_while_gated)
        failed_over = router.fail
        verdicts: list[str] = []

        def fail(*args: Any) -> None:
            verdicts.append("down")
            failed_over(*args)

        monkeypatch.setattr(router, "fail", fail)
        proxy.forward()
        await until(lambda: synced(gw), 60)  # it switches (a hang guard)
        assert slowed.is_set()  # the gated part was slow
        assert verdicts == []  # and that was not taken for an outage
    with psycopg.connect(pg_database) as conn:
        stored = conn.execute(
            "SELECT status FROM code_hero_runs WHERE run_id = ANY(%s)",
            ([r.run_id for r in runs],),
        ).fetchall()
    assert stored == [("SUCCESS",)] * len(runs)


class _SlowWhileGated:
    """The primary's checkpoint writes (a batch, and one by one) slow while the gate is
    closed: the first of each kind in each gated part takes `delay`, or each hangs."""

    def __init__(self, router: Any, delay: float | None) -> None:
        self.delay, self.gated, self.parts, self.on = delay, False, 0, True
        self.slowed: set[str] = set()
        self.bounds: list[float] = []
        primary = router.primary.backend
        saver, closed, run_call = primary.saver, router.gate.closed, router.calls.run

        @asynccontextmanager
        async def marked() -> AsyncIterator[None]:
            async with closed():
                self.gated, self.parts = True, self.parts + 1
                self.slowed.clear()
                try:
                    yield
                finally:
                    self.gated = False

        async def bounded(call: Any, seconds: float, what: str, **options: Any) -> Any:
            if what == "the copy-back's last part":
                self.bounds.append(seconds)
            return await run_call(call, seconds, what, **options)

        def slowed(name: str, write: Any) -> Any:
            async def slow(*args: Any) -> Any:
                if self.on and self.gated and name not in self.slowed:
                    self.slowed.add(name)
                    await asyncio.sleep(3600 if self.delay is None else self.delay)
                return await write(*args)

            return slow

        self.patches = [
            (router.gate, "closed", marked),
            (router.calls, "run", bounded),
            (primary, "put_batch", slowed("batch", primary.put_batch)),
            (saver, "aput", slowed("one", saver.aput)),
            (saver, "aput_writes", slowed("one", saver.aput_writes)),
        ]


async def _slow_gated_copy_back(
    pg_database: str, monkeypatch: pytest.MonkeyPatch, delay: float | None, seen: int
) -> tuple[_SlowWhileGated, float, bool]:
    """An outage's runs copied back to a primary slow while the gate is closed (`delay`
    by multiples of a step); after `seen` gated parts the primary is fast again."""
    async with behind_a_proxy(pg_database) as (gw, proxy):
        step = step_timeout(gw.manager.router.primary.config)
        router = gw.manager.router
        proxy.refuse()
        await until(lambda: degraded(gw))
        for _ in range(3):
            await gw.start_run(StartRun(graph="slow", input={"steps": []}, wait=True))
        slow = _SlowWhileGated(router, None if delay is None else delay * step)
        for target, name, value in slow.patches:
            monkeypatch.setattr(target, name, value)
        proxy.forward()

        async def done() -> bool:
            return await synced(gw) or slow.parts >= seen

        await until(done, 120)  # a hang guard
        switched_first = await synced(gw)
        slow.on = False
        await until(lambda: synced(gw), 60)
    return slow, step, switched_first


async def test_one_slow_statement_in_the_gated_part_gets_the_longer_bound(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slower than a step, faster than two: the second try's bound is for each step too.
    slow, step, switched = await _slow_gated_copy_back(pg_database, monkeypatch, 1.25, 3)
    assert switched, slow.bounds
    assert slow.bounds == [step, 2 * step]


async def test_a_slow_gated_part_holds_writers_two_steps_at_most(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A primary that hangs while the gate is closed, but answers probes: each check
    # tries the gated part twice, one step then two, never longer.
    slow, step, switched = await _slow_gated_copy_back(pg_database, monkeypatch, None, 3)
    assert not switched
    assert slow.bounds[:3] == [step, 2 * step, step], slow.bounds
