"""deleteThread on PostgreSQL against what runs meanwhile: the one-step deletion decides
"idle" with the thread's row locked, owners take it too, and a deadlock is no INTERNAL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest

from code_hero.auth import Caller
from code_hero.config import create_postgres_checkpointer
from code_hero.errors import ConflictError, NotFoundError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.manager import ThreadDeletion
from code_hero.persistence.records import RunRecord, RunStatus
from code_hero.persistence.registry import postgres as pg_registry
from code_hero.persistence.registry.dialect import RUN_FIELDS
from code_hero.runs.executor import StartRun
from tests.faults import held_writes
from tests.runs.conftest import SLOW_SPEC
from tests.runs.test_deletes import assert_gone

ADA, BOB = Caller(user_id="ada"), Caller(user_id="bob")


@pytest.fixture
def pg_database(pg_migrated_database: str) -> str:
    """A database of the test's own with the gateway's tables made (its migrations are
    not what these tests are about)."""
    return pg_migrated_database


@pytest.fixture
def slow_deadlock_check(pg_database: str) -> str:
    """The test database's sessions look for a deadlock 2 s after they begin to wait
    (PostgreSQL looks once per wait): ample time to close the cycle on a loaded machine
    (the test closes it as soon as it sees the wait). Asked for before `pg_gateway`, so
    the gateway's connections have it."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{conn.info.dbname}\" SET deadlock_timeout = '2s'")
        # The gateway's bound on a lock wait (5 s) would end the wait first: the
        # database's own lock_timeout wins over it.
        conn.execute(f"ALTER DATABASE \"{conn.info.dbname}\" SET lock_timeout = '60s'")
    return pg_database


@pytest.fixture
async def pg_gateway(pg_database: str) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        checkpointer=create_postgres_checkpointer(pg_database), graphs={"slow": SLOW_SPEC}
    )
    async with Gateway(settings) as gw:
        yield gw


async def _idle_thread(gw: Gateway, caller: Caller | None = None) -> tuple[str, str]:
    """A thread with one finished run and its checkpoints: (thread id, run id)."""
    kw = {} if caller is None else {"caller": caller}
    run = await gw.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True), **kw)
    assert run.status is RunStatus.SUCCESS
    return run.thread_id, run.run_id


async def test_a_run_admitted_while_the_deletion_waits_is_not_deleted_unseen(
    pg_gateway: Gateway, pg_database: str
) -> None:
    """A run admitted (the thread's row locked, the run inserted) just as the deletion
    starts: the deletion waits for that row, then sees the run and leaves the thread to
    the two steps (stop the run, then delete). It used to decide "idle" on the snapshot
    it took before waiting and delete the new run with the thread, unstopped."""
    thread_id, done_id = await _idle_thread(pg_gateway)
    others = ", ".join(f for f in RUN_FIELDS if f not in ("run_id", "status"))
    async with await psycopg.AsyncConnection.connect(pg_database) as admit:
        # What admit_run does, held open: the thread's row first, then the new run.
        await admit.execute(
            "UPDATE code_hero_threads SET status = 'BUSY' WHERE thread_id = %s", [thread_id]
        )
        await admit.execute(
            f"INSERT INTO code_hero_runs (run_id, status, {others}) "
            f"SELECT 'r-admitted', 'PENDING', {others} FROM code_hero_runs WHERE run_id = %s",
            [done_id],
        )
        deletion = asyncio.create_task(pg_gateway.manager.purge_idle_thread(thread_id))
        await _until_a_lock_waits(pg_database)  # the deletion waits for the thread's row
        assert not deletion.done()
        await admit.commit()
    gone = await deletion

    assert gone is not None and gone.busy and not gone.deleted
    assert await pg_gateway.manager.registry.get_run("r-admitted") is not None
    assert await pg_gateway.get_thread(thread_id) is not None


async def _until_a_lock_waits(pg_database: str) -> None:
    """Until a session of the test's database waits for a lock (pg_stat_activity)."""
    async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as look:
        for _ in range(3000):  # 30 s: a deletion that never waits fails the test below
            waiting = await look.execute(
                "SELECT 1 FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            if await waiting.fetchone():
                return
            await asyncio.sleep(0.01)
    pytest.fail("the deletion never waited for the checkpoints' rows")


async def _deadlocked_deletion(gw: Gateway, pg_database: str, thread_id: str) -> ThreadDeletion:
    """gw.delete_thread while a writer outside the gateway holds the thread's checkpoints
    and then wants the thread: PostgreSQL aborts the deletion (it detects the cycle first)."""
    async with await psycopg.AsyncConnection.connect(pg_database) as other:
        await other.execute("SET LOCAL deadlock_timeout = '60s'")  # the deletion detects it
        await other.execute(
            "SELECT 1 FROM checkpoints WHERE thread_id = %s FOR UPDATE", [thread_id]
        )
        deletion = asyncio.create_task(gw.delete_thread(thread_id))
        await _until_a_lock_waits(pg_database)  # it holds the thread, waits for checkpoints
        # PostgreSQL looks for a deadlock once, deadlock_timeout (2 s, slow_deadlock_check)
        # after the deletion began to wait: the cycle must be closed by then, or the
        # deletion's look finds none and ours (60 s) aborts us instead.
        await other.execute(
            "SELECT 1 FROM code_hero_threads WHERE thread_id = %s FOR UPDATE", [thread_id]
        )
        await other.commit()
    return await deletion


async def test_a_deadlocked_deletion_is_tried_again(
    slow_deadlock_check: str, pg_gateway: Gateway, pg_database: str
) -> None:
    """The deletion PostgreSQL aborted as a deadlock's victim is tried again: never
    INTERNAL."""
    thread_id, run_id = await _idle_thread(pg_gateway)

    gone = await _deadlocked_deletion(pg_gateway, pg_database, thread_id)

    assert gone.deleted and gone.runs_deleted == 1
    await assert_gone(pg_gateway, thread_id, [run_id])


async def test_a_deletion_that_keeps_deadlocking_is_a_conflict_to_retry(
    slow_deadlock_check: str,
    pg_gateway: Gateway,
    pg_database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pg_registry, "_DEADLOCK_RETRIES", 0)  # the last try deadlocks
    thread_id, _ = await _idle_thread(pg_gateway)

    with pytest.raises(ConflictError) as refused:
        await _deadlocked_deletion(pg_gateway, pg_database, thread_id)

    assert refused.value.code == "CONFLICT"
    assert refused.value.extensions == {"retryAfter": 1}
    assert await pg_gateway.get_thread(thread_id) is not None  # nothing deleted


async def test_an_owner_deletes_an_idle_thread_in_one_step(pg_gateway: Gateway) -> None:
    """No access hook: a user's deleteThread is the one-step deletion alone, the owner
    checked in it (no read of the thread before); another user's thread is refused as
    before (deleted: false, nothing removed)."""
    thread_id, run_id = await _idle_thread(pg_gateway, ADA)
    manager = pg_gateway.manager
    stored = await manager.router.count_checkpoints(thread_id)
    calls: list[str] = []  # what a deletion does beside the one step
    two_steps, read = manager.purge_thread, manager.get_thread

    async def purge_thread(tid: str) -> object:
        calls.append("purge_thread")
        return await two_steps(tid)

    async def get_thread(tid: str) -> object:
        calls.append("get_thread")
        return await read(tid)

    manager.purge_thread = purge_thread  # type: ignore[method-assign]
    manager.get_thread = get_thread  # type: ignore[method-assign]

    refused = await pg_gateway.delete_thread(thread_id, caller=BOB)
    assert not refused.deleted and (refused.checkpoints_deleted, refused.runs_deleted) == (0, 0)
    assert not (await pg_gateway.delete_thread("no-such-thread", caller=BOB)).deleted
    assert calls == []
    assert await pg_gateway.get_thread(thread_id, caller=ADA) is not None
    assert await manager.router.count_checkpoints(thread_id) == stored

    gone = await pg_gateway.delete_thread(thread_id, caller=ADA)

    assert gone.deleted and (gone.checkpoints_deleted, gone.runs_deleted) == (stored, 1)
    assert calls == []  # one step: no ownership read before it, no two-step deletion
    await assert_gone(pg_gateway, thread_id, [run_id])


async def test_the_one_step_deletion_is_one_statement(
    pg_gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-step deletion is one statement (its function locks the thread's row, then
    decides and deletes, each step with a snapshot of its own): no lock sent ahead of it
    in a pipeline, whose statement between the two a run could be admitted around. Its
    transaction is the statement's: nothing to hold between round trips (issue 15)."""
    thread_id, run_id = await _idle_thread(pg_gateway)
    sent: list[str] = []
    send = psycopg.AsyncCursor.execute

    async def execute(cur: psycopg.AsyncCursor[Any], query: Any, *args: Any, **kw: Any) -> Any:
        sent.append(str(query))
        return await send(cur, query, *args, **kw)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", execute)
    gone = await pg_gateway.manager.purge_idle_thread(thread_id)
    monkeypatch.undo()

    assert gone is not None and gone.deleted and gone.runs_deleted == 1
    assert len(sent) == 1 and "code_hero_purge_thread(" in sent[0], sent
    await assert_gone(pg_gateway, thread_id, [run_id])


async def _a_run_outliving_its_thread(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, ended: Callable[[RunRecord], Awaitable[None]]
) -> RunRecord:
    """A run whose thread's rows another replica deleted under it (it could not stop
    the run), which goes on writing checkpoints; `ended` runs once its end found its
    row gone, before the purge of what it wrote after. Returns once the run is over."""
    registry = gw.manager.registry
    finish = registry.finish_run
    # The run's first checkpoint waits for the deletion.
    reached, go_on = held_writes(monkeypatch, gw.manager.router)

    async def finish_run(run_id: str, *args: Any, **kw: Any) -> Any:
        done = await finish(run_id, *args, **kw)
        if run_id == run.run_id:
            assert done == (None, False)  # its row is gone: the purge comes next
            await ended(run)
        return done

    monkeypatch.setattr(registry, "finish_run", finish_run)
    run = await gw.start_run(StartRun(graph="slow", input={}))
    await asyncio.wait_for(reached.wait(), 30)
    await registry.delete_thread(run.thread_id)  # the rows go; the run goes on writing
    go_on.set()
    with pytest.raises(NotFoundError):  # once it has ended here, the purge done
        await gw.executor.wait(run.run_id, limit=30)
    monkeypatch.undo()
    return run


@pytest.mark.parametrize("backend_config", ["memory", "sqlite", "postgres"], indirect=True)
async def test_what_a_run_writes_after_its_thread_was_deleted_goes_too(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def nothing(run: RunRecord) -> None:
        assert await gateway.get_checkpoint(run.thread_id) is not None  # written after

    run = await _a_run_outliving_its_thread(gateway, monkeypatch, nothing)

    assert await gateway.get_checkpoint(run.thread_id) is None
    assert await gateway.manager.router.count_checkpoints(run.thread_id) == 0


@pytest.mark.parametrize("backend_config", ["sqlite", "postgres"], indirect=True)
async def test_a_run_outliving_its_thread_leaves_a_thread_made_anew_under_its_id_alone(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The purge of what such a run wrote after read the thread's row, then deleted: a
    thread made anew under the id in between (a startRun naming it) lost the
    checkpoints its first run wrote. Now the deletion itself looks for the row
    (in-memory registries keep the two steps)."""
    made: list[RunRecord] = []

    async def made_anew(run: RunRecord) -> None:
        # The id is taken again: a new thread, and its first run's checkpoints ...
        start = StartRun(thread_id=run.thread_id, graph="slow", input={}, wait=True)
        made.append(await gateway.start_run(start))

        async def stale(thread_id: str, **kw: Any) -> Any:
            return None  # ... which the purge's read, made just before, did not see

        monkeypatch.setattr(gateway.manager.registry, "get_thread", stale)

    run = await _a_run_outliving_its_thread(gateway, monkeypatch, made_anew)

    (new,) = made
    assert new.status is RunStatus.SUCCESS
    latest = await gateway.get_checkpoint(run.thread_id)
    assert latest is not None and latest.run_id == new.run_id
