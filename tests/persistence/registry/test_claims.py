"""Admission and the end of a run: the thread's owner and status, and deletes that are final."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from code_hero.errors import NotFoundError
from code_hero.persistence.records import Registry, RunFilter, RunStatus, ThreadStatus
from code_hero.persistence.registry import PostgresRegistry
from tests.persistence.registry.support import at, events, make_pool, run


async def test_a_run_creates_its_thread_and_later_runs_keep_it(registry: Registry) -> None:
    before = datetime.now(UTC)
    await registry.admit_run(
        run("r1", "t1", user_id="u1", metadata={"k": "v"}), reject_if_busy=False
    )
    created = await registry.get_thread("t1")
    assert created is not None
    assert (created.user_id, created.status) == ("u1", ThreadStatus.BUSY)
    # A thread a run creates starts with that run's metadata.
    assert created.metadata == {"graph": "g", "k": "v"}
    assert created.created_at == created.updated_at >= before - timedelta(seconds=1)
    assert created.created_at.utcoffset() == timedelta(0)

    await registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    await registry.admit_run(run("r2", "t1", user_id="u2", metadata={"x": 1}), reject_if_busy=False)
    again = await registry.get_thread("t1")
    assert again is not None
    assert (again.user_id, again.metadata) == ("u1", {"graph": "g", "k": "v"})
    assert again.status is ThreadStatus.BUSY
    assert again.created_at == created.created_at and again.updated_at > created.updated_at


async def test_finish_run_sets_the_thread_status_and_bumps_updated_at(registry: Registry) -> None:
    await registry.admit_run(run("r1", "t1"), reject_if_busy=False)
    before = await registry.get_thread("t1")
    assert before is not None
    finished, waiting = await registry.finish_run(
        "r1", ThreadStatus.INTERRUPTED, status=RunStatus.INTERRUPTED
    )
    assert finished is not None and finished.status is RunStatus.INTERRUPTED and not waiting
    after = await registry.get_thread("t1")
    assert after is not None and after.status is ThreadStatus.INTERRUPTED
    assert after.updated_at > before.updated_at

    # A thread with another unfinished run stays BUSY: the run's end says so.
    await registry.admit_run(run("r2", "t2"), reject_if_busy=False)
    await registry.admit_run(run("r3", "t2"), reject_if_busy=False)
    _, waiting = await registry.finish_run("r2", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    busy = await registry.get_thread("t2")
    assert waiting and busy is not None and busy.status is ThreadStatus.BUSY

    assert await registry.finish_run("missing", ThreadStatus.BUSY, status=RunStatus.SUCCESS) == (
        None,
        False,
    )
    assert await registry.get_thread("missing") is None


async def test_admit_run_keeps_the_owner_and_guards_it(registry: Registry) -> None:
    first, _ = await registry.admit_run(run("r1", "t", user_id="ann"), reject_if_busy=False)
    assert first is not None
    # A later run by someone else (an administrator) never changes the owner.
    await registry.admit_run(run("r2", "t", user_id="root"), reject_if_busy=False)
    thread = await registry.get_thread("t")
    assert thread is not None and thread.user_id == "ann"
    # With `owner`, another user's thread is not found, and nothing is written.
    with pytest.raises(NotFoundError):
        await registry.admit_run(run("r3", "t", user_id="bob"), reject_if_busy=False, owner="bob")
    assert await registry.get_run("r3") is None
    admitted, _ = await registry.admit_run(
        run("r4", "t", user_id="ann"), reject_if_busy=False, owner="ann"
    )
    assert admitted is not None
    new, _ = await registry.admit_run(
        run("r5", "new", user_id="bob"), reject_if_busy=False, owner="bob"
    )
    assert new is not None and (await registry.get_thread("new")).user_id == "bob"  # type: ignore[union-attr]
    # Runs filtered by their thread's owner: bob's thread only.
    page = await registry.list_runs(RunFilter(owner="bob"), first=10)
    assert [r.run_id for r in page.items] == ["r5"]
    page = await registry.list_runs(RunFilter(owner="ann"), first=10)
    assert {r.run_id for r in page.items} == {"r1", "r2", "r4"}


async def test_a_run_ending_after_its_threads_deletion_writes_nothing(registry: Registry) -> None:
    admitted, _ = await registry.admit_run(run("r1", "t"), reject_if_busy=True)
    assert admitted is not None
    await registry.admit_run(run("r2", "other"), reject_if_busy=True)

    assert await registry.delete_thread("t") == (True, 1)

    # What the run still does as it ends: its events, its end, its checkpoint's touch.
    await registry.store_events([*events("r1", "t", 2, 3), *events("r2", "other", 2)])
    await registry.put_events(events("r1", "t", 4))
    assert await registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS) == (
        None,
        False,
    )
    assert await registry.update_run("r1", status=RunStatus.RUNNING) is None
    await registry.touch_threads({"t": "ann"}, create=False)

    assert await registry.get_thread("t") is None
    assert await registry.get_run("r1") is None
    assert await registry.list_events("r1") == []
    # The other run's event of the same batch was stored.
    assert [e.seq for e in await registry.list_events("r2")] == [2]
    # A plain touch (a graph.ainvoke on the manager's saver) creates the row afresh.
    await registry.touch_threads({"t": "ann"})
    created = await registry.get_thread("t")
    assert created is not None and created.user_id == "ann"


async def test_the_thread_row_cascades_to_runs_and_events(registry: Registry) -> None:
    await registry.admit_run(run("r1", "t"), reject_if_busy=True, events=events("r1", "t", 1))
    with pytest.raises(NotFoundError):
        await registry.put_run(run("r9", "missing"))
    assert await registry.get_run("r9") is None
    assert await registry.delete_thread("t") == (True, 1)
    assert await registry.list_events("r1") == []


async def test_finish_run_waits_for_an_admission_holding_the_thread(pg_database: str) -> None:
    """A run finishing while an ENQUEUE is admitted on its thread: whichever holds the
    thread row first, the queued run is seen (the thread stays BUSY, `waiting` is True)
    or admitted after the end (then claimable at once); never BUSY overwritten by IDLE."""
    pool = make_pool(pg_database)
    await pool.open()
    try:
        registry = PostgresRegistry(pool)
        await registry.setup()
        await registry.admit_run(run("r1", "t", created_at=at(1)), reject_if_busy=True)
        await registry.update_run("r1", status=RunStatus.RUNNING)
        async with pool.connection() as holder, pool.connection() as probe:
            await holder.set_autocommit(False)
            await holder.execute("SELECT 1 FROM code_hero_threads WHERE thread_id = 't' FOR UPDATE")

            async def until_waiting_on_locks(n: int) -> None:
                for _ in range(3000):  # a bound, not a timing: each look is a round trip
                    cur = await probe.execute(
                        "SELECT count(*) AS n FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                    row = await cur.fetchone()
                    if row is not None and int(row["n"]) >= n:
                        return
                    await asyncio.sleep(0.01)
                raise AssertionError(f"{n} sessions never waited on the thread row")

            # The ENQUEUE queues on the thread row first, then the run's end.
            admit = asyncio.create_task(
                registry.admit_run(run("r2", "t", created_at=at(2)), reject_if_busy=False)
            )
            await until_waiting_on_locks(1)
            finish = asyncio.create_task(
                registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
            )
            await until_waiting_on_locks(2)
            await holder.rollback()
            admitted, busy = await admit
            finished, waiting = await finish
        assert admitted is not None and busy == "r1"
        assert finished is not None and finished.status is RunStatus.SUCCESS
        assert waiting  # the executor sends the wake-up for r2
        thread = await registry.get_thread("t")
        assert thread is not None and thread.status is ThreadStatus.BUSY
    finally:
        await pool.close()


async def test_two_rejecting_admissions_queued_on_one_thread_admit_one(pg_database: str) -> None:
    """Two REJECT starts wait on the thread row together: the second sees the run the
    first committed while it waited (its look at the thread's runs follows the lock)."""
    pool = make_pool(pg_database)
    await pool.open()
    try:
        registry = PostgresRegistry(pool)
        await registry.setup()
        await registry.admit_run(run("r0", "t", created_at=at(0)), reject_if_busy=True)
        await registry.finish_run("r0", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
        async with pool.connection() as holder, pool.connection() as probe:
            await holder.set_autocommit(False)
            await holder.execute("SELECT 1 FROM code_hero_threads WHERE thread_id = 't' FOR UPDATE")
            admits = [
                asyncio.create_task(
                    registry.admit_run(run(f"r{i}", "t", created_at=at(i)), reject_if_busy=True)
                )
                for i in (1, 2)
            ]
            for _ in range(3000):  # a bound, not a timing: each look is a round trip
                cur = await probe.execute(
                    "SELECT count(*) AS n FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                row = await cur.fetchone()
                if row is not None and int(row["n"]) >= 2:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the admissions never waited on the thread row")
            await holder.rollback()
            results = [await admit for admit in admits]
        admitted = [record.run_id for record, _ in results if record is not None]
        refused = [busy for record, busy in results if record is None]
        assert len(admitted) == 1 and refused == admitted
        assert [r.run_id for r in await registry.unfinished_runs("t")] == admitted
    finally:
        await pool.close()
