"""Degraded mode: the gateway keeps starting runs while PostgreSQL is unreachable.

The database sits behind a proxy that the test cuts (connections reset, new
ones refused) and restores, so the real server keeps serving every other test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from code_hero.auth import ANONYMOUS
from code_hero.errors import (
    BackendUnavailableError,
    BadInputError,
    ConflictError,
    RunHeldUpError,
    ThreadBeingDeletedError,
)
from code_hero.gateway import Gateway
from code_hero.persistence import recovery
from code_hero.persistence.backends import MemoryBackend
from code_hero.persistence.checkpoints import CheckpointView
from code_hero.persistence.entries import ChangeRun, CopyEvents, FinishRun, ReleaseRun
from code_hero.persistence.manager import ThreadDeletion
from code_hero.persistence.pg_backend import PostgresBackend
from code_hero.persistence.records import (
    DeletionMark,
    EventRecord,
    RunFilter,
    RunRecord,
    RunStatus,
    ThreadFilter,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.runs import edits
from code_hero.runs.edits import UpdateState
from code_hero.runs.events import EventType
from code_hero.runs.executor import StartRun
from tests.conftest import PG_ADMIN_URL
from tests.faults import BlackHoleProxy, held_writes, until
from tests.persistence.proxied import behind_a_proxy

pytestmark = pytest.mark.postgres
PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432

SLOW_STEPS = [f"s{i}" for i in range(6)]
# Every table that holds rows of a thread.
EVERY_TABLE = ("code_hero_threads", "checkpoints", "code_hero_runs", "code_hero_run_events")


@pytest.fixture
def pg_database(pg_migrated_database: str) -> str:
    """A database of the test's own with the gateway's tables made: every test here is
    about an outage after the gateway's first open, not about that open's migrations."""
    return pg_migrated_database


@pytest.fixture
async def proxied(pg_database: str) -> AsyncIterator[tuple[Gateway, BlackHoleProxy]]:
    async with behind_a_proxy(pg_database) as behind:
        yield behind


@pytest.fixture
async def long_leased(pg_database: str) -> AsyncIterator[tuple[Gateway, BlackHoleProxy]]:
    """As `proxied`, with leases far longer than any test: a run left leased stays so."""
    async with behind_a_proxy(pg_database, lease_seconds=600) as behind:
        yield behind


async def _outage_begins(gw: Gateway, proxy: BlackHoleProxy) -> None:
    """Cut PostgreSQL off, until the gateway serves from its fallback."""
    proxy.refuse()
    await until(lambda: _degraded(gw))


async def _outage_ends(gw: Gateway, proxy: BlackHoleProxy) -> None:
    """Let PostgreSQL through again, until what the fallback held is synced back."""
    proxy.forward()
    await until(lambda: _synced(gw))


def _assert_none_left(
    pg_database: str,
    thread_id: str,
    tables: Sequence[str] = ("code_hero_threads", "checkpoints", "code_hero_runs"),
) -> None:
    """PostgreSQL holds no row of the thread in any of `tables`."""
    for table in tables:
        found = rows(pg_database, f"SELECT count(*) FROM {table} WHERE thread_id = %s", thread_id)
        assert found == [(0,)], table


async def collect(stream: AsyncIterator[EventRecord]) -> list[EventRecord]:
    return [event async for event in stream]


def rows(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql, params).fetchall())


async def test_runs_start_during_an_outage_and_reach_postgres_afterwards(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str
) -> None:
    gw, proxy = proxied
    before = await gw.start_run(StartRun(graph="slow", input={"steps": []}, wait=True))
    assert before.status is RunStatus.SUCCESS
    # In flight when the outage starts: it finishes on the fallback, its subscriber sees all.
    inflight = await gw.start_run(StartRun(graph="slow", input={"delay": 0.3}))
    await until(lambda: _status_is(gw, inflight.run_id, RunStatus.RUNNING))
    follower = asyncio.create_task(collect(await gw.follow_run(inflight.run_id)))
    await until(lambda: _has_checkpoints(gw, inflight.thread_id))  # a step is in PostgreSQL

    await _outage_begins(gw, proxy)
    health = await gw.health()
    assert health["overall_status"] == "degraded"

    # A new thread works end to end on the fallback, subscribers included.
    during = await gw.start_run(StartRun(graph="slow", input={"delay": 0.05}))
    live = asyncio.create_task(collect(await gw.follow_run(during.run_id)))
    seen = await asyncio.wait_for(live, 30)
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1].payload["status"] == "SUCCESS"
    await until(lambda: _status_is(gw, during.run_id, RunStatus.SUCCESS))
    history = await gw.list_checkpoints(during.thread_id, first=100)
    assert history.items[0].values["steps"] == SLOW_STEPS
    listed = await gw.threads_page(ThreadFilter(), first=20)
    assert [t.thread_id for t in listed.items] == [during.thread_id]  # the fallback's only

    # What only PostgreSQL holds answers UNAVAILABLE with a hint, at once.
    for call in (
        gw.get_thread(before.thread_id),
        gw.start_run(StartRun(thread_id=before.thread_id, graph="slow", input={})),
        gw.list_checkpoints(before.thread_id),
        gw.get_run(before.run_id),
    ):
        with pytest.raises(BackendUnavailableError, match="unreachable") as caught:
            await asyncio.wait_for(call, 2)
        assert caught.value.code == "UNAVAILABLE" and caught.value.retry_after >= 1

    old_events = await asyncio.wait_for(follower, 30)
    assert [e.seq for e in old_events] == list(range(1, len(old_events) + 1))
    assert old_events[-1].payload["status"] == "SUCCESS"
    seen_during = await gw.run_events(during.run_id, first=1000)
    assert gw.manager.pending_sync > 0

    await _outage_ends(gw, proxy)
    assert gw.manager.router.degraded_since is None

    # PostgreSQL itself now holds all of it, exactly as served during the outage.
    thread = rows(
        pg_database,
        "SELECT status, metadata->>'graph' FROM code_hero_threads WHERE thread_id = %s",
        during.thread_id,
    )
    assert thread == [(ThreadStatus.IDLE.value, "slow")]
    run = rows(
        pg_database,
        "SELECT status, output->'steps', finished_at IS NOT NULL FROM code_hero_runs "
        "WHERE run_id = %s",
        during.run_id,
    )
    assert run == [("SUCCESS", SLOW_STEPS, True)]
    stored = rows(
        pg_database,
        "SELECT seq, type FROM code_hero_run_events WHERE run_id = %s ORDER BY seq",
        during.run_id,
    )
    assert stored == [(e.seq, e.type) for e in seen_during]
    flight = rows(
        pg_database,
        "SELECT r.status, t.status FROM code_hero_runs r JOIN code_hero_threads t "
        "USING (thread_id) WHERE run_id = %s",
        inflight.run_id,
    )
    assert flight == [("SUCCESS", "IDLE")]
    # Each run's timeline reached PostgreSQL too: born in the outage (copied whole), and
    # in flight across it (its changes and its end replayed).
    for run_id in (during.run_id, inflight.run_id):
        steps = rows(
            pg_database,
            "SELECT s->>'node', s->>'finished_at' IS NOT NULL, s->>'error' FROM code_hero_runs, "
            "jsonb_array_elements(steps) AS s WHERE run_id = %s",
            run_id,
        )
        assert [node for node, done, error in steps if done and error is None] == SLOW_STEPS
    flight_events = rows(
        pg_database,
        "SELECT seq FROM code_hero_run_events WHERE run_id = %s ORDER BY seq",
        inflight.run_id,
    )
    assert [r[0] for r in flight_events] == [e.seq for e in old_events]
    async with AsyncPostgresSaver.from_conn_string(pg_database) as stock:
        latest = await stock.aget_tuple(
            {"configurable": {"thread_id": during.thread_id, "checkpoint_ns": ""}}
        )
        assert latest is not None
        assert latest.checkpoint["channel_values"]["steps"] == SLOW_STEPS
        count = len(
            [c async for c in stock.alist({"configurable": {"thread_id": during.thread_id}})]
        )
    assert count == len(history.items)
    # And the gateway reads it from PostgreSQL, as if there had been no outage.
    listed = await gw.threads_page(ThreadFilter(), first=20)
    expected = {before.thread_id, inflight.thread_id, during.thread_id}
    assert {t.thread_id for t in listed.items} == expected
    assert [e.seq for e in await gw.run_events(during.run_id, first=1000)] == [
        e.seq for e in seen_during
    ]


async def test_a_run_whose_graph_returns_a_nul_in_an_outage_ends_error_after_it(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str
) -> None:
    # The fallback stored the NUL the graph returned, and the copy-back met what
    # PostgreSQL refuses: the run's row and events were quarantined (`quarantined: 2`)
    # and run(id) answered null, readable nowhere. Its events and output are stored
    # with U+FFFD for the NUL now; the checkpoint is the stock saver's to refuse, and
    # stays quarantined. Its run's SUCCESS then stood in PostgreSQL, the thread lacking
    # the state it ended with: it ends ERROR there, as on a healthy database, saying why.
    gw, proxy = proxied
    await _outage_begins(gw, proxy)
    start = gw.start_run(StartRun(graph="nul", input={}, wait=True))
    run = await asyncio.wait_for(start, 60)
    assert run.status is RunStatus.SUCCESS  # what the fallback told at the time
    events = await gw.run_events(run.run_id, first=1000)
    await _outage_ends(gw, proxy)
    after = await gw.get_run(run.run_id)
    assert after is not None and after.status is RunStatus.ERROR
    assert "refused to store one of its checkpoints" in (after.error or "")
    assert "ended SUCCESS" in (after.error or "")
    assert after.output == run.output == {"text": "zero\ufffdbyte"}
    assert await gw.run_events(run.run_id, first=1000) == events
    stored = rows(
        pg_database,
        "SELECT r.status, t.status FROM code_hero_runs r JOIN code_hero_threads t "
        "USING (thread_id) WHERE run_id = %s",
        run.run_id,
    )
    assert stored == [("ERROR", ThreadStatus.ERROR.value)]
    # Only the checkpoint holding the NUL stays quarantined (the stock saver's jsonb).
    assert (await gw.health())["quarantined"] == 1


async def test_a_deleted_run_of_a_thread_with_a_quarantined_checkpoint_stays_deleted(
    proxied: tuple[Gateway, BlackHoleProxy],
) -> None:
    # The run reached PostgreSQL; only its thread's checkpoint was quarantined. Deleted
    # there, it came back from the fallback's copy, read as kept for its thread's sake.
    gw, proxy = proxied
    await _outage_begins(gw, proxy)
    run = await asyncio.wait_for(gw.start_run(StartRun(graph="nul", input={}, wait=True)), 60)
    await _outage_ends(gw, proxy)
    assert (await gw.health())["quarantined"] == 1
    assert await gw.delete_run(run.run_id)
    assert await gw.get_run(run.run_id) is None
    assert await gw.run_events(run.run_id, first=1000) == []


async def _a_run_whose_copy_back_is_refused(
    gw: Gateway, proxy: BlackHoleProxy, monkeypatch: pytest.MonkeyPatch
) -> tuple[RunRecord, list[EventRecord]]:
    """A run born in an outage, and its events then, whose row PostgreSQL refuses at
    the copy-back (here injected): quarantined once the outage ends, the fallback
    keeping it."""
    await _outage_begins(gw, proxy)
    run = await asyncio.wait_for(
        gw.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True)), 60
    )
    assert run.status is RunStatus.SUCCESS
    events = await gw.run_events(run.run_id, first=1000)
    primary = gw.manager.router.primary.backend
    assert primary is not None
    put_run, copy_thread = primary.registry.put_run, primary.registry.copy_thread

    async def refused(record: RunRecord, **kw: Any) -> None:
        if record.run_id == run.run_id:
            raise ValueError("injected: a value PostgreSQL cannot store")
        await put_run(record, **kw)

    async def copy_refused(thread: ThreadRecord, runs: list[RunRecord], *args: Any) -> bool:
        if any(record.run_id == run.run_id for record in runs):
            raise ValueError("injected: a value PostgreSQL cannot store")
        return await copy_thread(thread, runs, *args)

    monkeypatch.setattr(primary.registry, "put_run", refused)  # a late copy's
    monkeypatch.setattr(primary.registry, "copy_thread", copy_refused)  # the drain's
    await _outage_ends(gw, proxy)
    assert (await gw.health())["quarantined"] == 1
    return run, events


async def test_a_run_whose_copy_back_is_refused_stays_readable_with_its_events(
    proxied: tuple[Gateway, BlackHoleProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Quarantined, run(id) answered null though the fallback kept it.
    gw, proxy = proxied
    run, events = await _a_run_whose_copy_back_is_refused(gw, proxy, monkeypatch)
    assert await gw.get_run(run.run_id) == run
    assert await gw.run_events(run.run_id, first=1000) == events
    # Deleted, the kept copy goes too: it is not read in place of the deleted run.
    assert await gw.delete_run(run.run_id)
    assert await gw.get_run(run.run_id) is None
    assert await gw.run_events(run.run_id, first=1000) == []


async def test_a_kept_copys_failed_deletion_does_not_take_the_primary_down(
    proxied: tuple[Gateway, BlackHoleProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deleting a run also deletes the fallback's kept copy; that copy's failure was
    # judged as the primary's, and an error that reads as "down" moved every write
    # off a primary that had just deleted the run.
    gw, proxy = proxied
    run, _ = await _a_run_whose_copy_back_is_refused(gw, proxy, monkeypatch)
    router = gw.manager.router
    assert await gw.get_run(run.run_id) == run  # the kept copy
    for slot in router.slots[1:]:
        if slot.backend is not None:

            async def down(run_id: str) -> bool:
                raise psycopg.OperationalError("injected: the fallback's failure")

            monkeypatch.setattr(slot.backend.registry, "delete_run", down)
    await gw.delete_run(run.run_id)
    assert router.active == 0, "the primary still serves"


async def test_deleting_a_thread_born_in_the_outage_is_final(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str
) -> None:
    gw, proxy = proxied
    await _outage_begins(gw, proxy)
    kept = await gw.start_run(StartRun(graph="slow", input={}, wait=True))
    doomed = await gw.start_run(StartRun(graph="slow", input={}, wait=True))
    gone = await gw.delete_thread(doomed.thread_id)
    assert gone.deleted and gone.checkpoints_deleted > 0
    assert await gw.get_thread(doomed.thread_id) is None
    await _outage_ends(gw, proxy)
    threads = rows(pg_database, "SELECT thread_id FROM code_hero_threads")
    assert threads == [(kept.thread_id,)]
    assert rows(
        pg_database, "SELECT count(*) FROM checkpoints WHERE thread_id = %s", doomed.thread_id
    ) == [(0,)]
    assert rows(
        pg_database,
        "SELECT count(*) FROM code_hero_run_events WHERE thread_id = %s",
        doomed.thread_id,
    ) == [(0,)]


async def _born_in_an_outage(gw: Gateway, proxy: BlackHoleProxy) -> str:
    """Cut PostgreSQL off; a thread with one finished run, born on the fallback."""
    await _outage_begins(gw, proxy)
    return (await gw.start_run(StartRun(graph="slow", input={}, wait=True))).thread_id


async def test_a_run_started_while_a_thread_born_in_the_outage_is_deleted_is_refused(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the chaos audit: a startRun admitted between the deletion's steps (after
    # its runs were stopped) wrote checkpoints once the thread was gone; they were
    # journalled after its DeleteThread and copied back, with no thread row. Then such
    # a run was deleted with the thread once acknowledged. The deletion now marks the
    # row before it stops the runs: the startRun is refused (CONFLICT, retryAfter; no
    # reap during an outage), and nothing of the thread is left.
    gw, proxy = proxied
    thread_id = await _born_in_an_outage(gw, proxy)
    executor = gw.services.executor
    stop_thread = executor.stop_thread
    refused: list[ConflictError] = []

    async def stop_then_admit(thread: str) -> None:
        await stop_thread(thread)
        with pytest.raises(ConflictError) as refusal:
            await gw.start_run(StartRun(thread_id=thread, graph="slow", input={}))
        refused.append(refusal.value)

    monkeypatch.setattr(executor, "stop_thread", stop_then_admit)
    gone = await gw.delete_thread(thread_id)
    assert gone.deleted
    (refusal,) = refused
    assert isinstance(refusal, ThreadBeingDeletedError) and refusal.retry_after == 1
    assert await gw.get_thread(thread_id) is None

    await _outage_ends(gw, proxy)
    _assert_none_left(pg_database, thread_id, EVERY_TABLE)


async def test_the_last_step_of_a_deletion_in_an_outage_leaves_a_thread_made_anew_alone(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deletion of a thread born in the outage is held before its last step; another
    # deletion ends it meanwhile, and a client starts a run on the id anew. The last
    # step deleted by id alone (the fallback's checkpoints and rows, and a DeleteThread
    # journalled after the new thread's writes): the acknowledged run and its thread
    # went, here and on PostgreSQL after the recovery. It leaves them alone now.
    gw, proxy = proxied
    thread_id = await _born_in_an_outage(gw, proxy)
    router = gw.manager.router
    delete_thread = router.delete_thread
    reached, go = asyncio.Event(), asyncio.Event()
    held = True

    async def held_once(thread: str, **kw: Any) -> int | None:
        nonlocal held
        if held:
            held = False
            reached.set()
            await go.wait()
        return await delete_thread(thread, **kw)

    monkeypatch.setattr(router, "delete_thread", held_once)
    deletion = asyncio.create_task(gw.delete_thread(thread_id))
    await reached.wait()  # marked, its runs stopped: the last step is next
    assert (await gw.manager.purge_thread(thread_id)).deleted  # another deletion ends it
    anew = await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}, wait=True))
    assert anew.status is RunStatus.SUCCESS
    go.set()
    ended = await deletion  # the other deletion ended its thread: the new one is not its own
    assert ended.deleted and (ended.checkpoints_deleted, ended.runs_deleted) == (0, 0)

    assert await gw.get_run(anew.run_id) is not None
    assert await gw.get_checkpoint(thread_id) is not None
    await _outage_ends(gw, proxy)
    runs = rows(pg_database, "SELECT run_id FROM code_hero_runs WHERE thread_id = %s", thread_id)
    assert runs == [(anew.run_id,)]
    assert rows(
        pg_database, "SELECT count(*) > 0 FROM checkpoints WHERE thread_id = %s", thread_id
    ) == [(True,)]


async def test_a_deletion_in_an_outage_leaves_a_thread_another_deletion_marked_to_it(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Of a thread born in the outage: deletion A is held before its last step; another
    # deletion ends the thread, a client starts a run on the id anew, and deletion D
    # marks that thread and is held before its stop. A's last step took the marked row
    # (the new thread's checkpoints, row and run, and journalled their deletion), so D's
    # stop found no run: the acknowledged run went on writing. A leaves D's mark now.
    gw, proxy = proxied
    thread_id = await _born_in_an_outage(gw, proxy)
    manager, executor = gw.manager, gw.services.executor
    end_deletion, stop_thread = manager.end_deletion, executor.stop_thread
    a_reached, a_go, d_reached, d_go = (asyncio.Event() for _ in range(4))

    async def a_held(thread: str, token: str) -> ThreadDeletion:
        a_reached.set()
        await a_go.wait()
        return await end_deletion(thread, token)

    async def d_held(thread: str) -> None:
        d_reached.set()
        await d_go.wait()
        await stop_thread(thread)

    monkeypatch.setattr(manager, "end_deletion", a_held)
    first = asyncio.create_task(gw.delete_thread(thread_id))
    await a_reached.wait()  # A has marked the thread and stopped its runs
    monkeypatch.setattr(manager, "end_deletion", end_deletion)
    assert (await manager.purge_thread(thread_id)).deleted  # another deletion ends it
    anew = await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={"delay": 30}))
    await until(lambda: _status_is(gw, anew.run_id, RunStatus.RUNNING))
    monkeypatch.setattr(executor, "stop_thread", d_held)
    second = asyncio.create_task(gw.delete_thread(thread_id))
    await d_reached.wait()  # D has marked the new thread: its stop is next
    a_go.set()
    ended = await first  # another deletion ended A's thread; D's is not A's
    assert ended.deleted and (ended.checkpoints_deleted, ended.runs_deleted) == (0, 0)
    d_go.set()

    gone = await second
    assert gone.deleted and gone.runs_deleted == 1
    assert not executor.is_active(anew.run_id)  # stopped: it writes nothing more
    await _outage_ends(gw, proxy)
    _assert_none_left(pg_database, thread_id)


async def test_two_deletions_of_one_mark_in_an_outage_count_its_checkpoints_once(
    proxied: tuple[Gateway, BlackHoleProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two deletions of a thread born in the outage, one joining the other's mark, both
    # reach their last step. Each counted the thread's checkpoints before either deleted
    # them, and both answered them deleted. The router counts what it deletes, under the
    # lock a deletion's last step takes: the second finds none.
    gw, proxy = proxied
    thread_id = await _born_in_an_outage(gw, proxy)
    manager, router = gw.manager, gw.manager.router
    before = await router.count_checkpoints(thread_id)
    assert before > 0
    start_deletion, count_checkpoints = manager.start_deletion, router.count_checkpoints
    marks: list[DeletionMark] = []
    counted: list[int] = []
    both_marked, both_counted = asyncio.Event(), asyncio.Event()

    async def marked_then_wait(thread: str) -> DeletionMark | None:
        mark = await start_deletion(thread)
        assert mark is not None
        marks.append(mark)
        if len(marks) == 2:
            both_marked.set()
        await both_marked.wait()
        return mark

    async def counted_then_wait(thread: str, *args: Any, **kw: Any) -> int:
        # A count, if a last step makes one, waits for the other's: both count first.
        n = await count_checkpoints(thread, *args, **kw)
        counted.append(n)
        if len(counted) == 2:
            both_counted.set()
        await both_counted.wait()
        return n

    monkeypatch.setattr(manager, "start_deletion", marked_then_wait)
    monkeypatch.setattr(router, "count_checkpoints", counted_then_wait)
    a, b = await asyncio.gather(gw.delete_thread(thread_id), gw.delete_thread(thread_id))
    assert marks[0].token == marks[1].token  # one joined the other's mark
    assert a.deleted and b.deleted
    assert a.checkpoints_deleted + b.checkpoints_deleted == before


async def test_a_run_outliving_its_thread_into_an_outage_leaves_no_checkpoints_behind(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the chaos audit (seed 92): a run admitted while its thread was deleted
    # outlived the deletion's last step (its rows gone) and ended in an outage. Its end
    # was journalled (FinishRun) and answered, so its executor never saw the row gone
    # nor purged what it wrote after the deletion; after the recovery PostgreSQL held
    # those checkpoints with no thread row. The replayed end finds the run gone: what
    # it wrote goes, as on the healthy path (`RunExecutor._purge_if_deleted`).
    gw, proxy = proxied
    registry = gw.manager.registry
    # The run's first checkpoint waits for the deletion.
    reached, go_on = held_writes(monkeypatch, gw.manager.router)
    run = await gw.start_run(StartRun(graph="slow", input={}))
    await asyncio.wait_for(reached.wait(), 30)
    await registry.delete_thread(run.thread_id)  # the deletion's last step: rows gone
    await _outage_begins(gw, proxy)  # the run's end falls into an outage
    go_on.set()
    await until(lambda: _executing_none(gw))
    assert gw.manager.pending_sync > 0  # what it wrote in the outage, journalled

    await _outage_ends(gw, proxy)
    _assert_none_left(pg_database, run.thread_id, EVERY_TABLE)


async def _marked_across_the_copy_back(
    gw: Gateway, proxy: BlackHoleProxy, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, asyncio.Task[ThreadDeletion], asyncio.Event]:
    """A thread born in an outage, and a deletion of it held once it has marked the row
    until the event is set, while PostgreSQL comes back and the copy-back takes the row
    (marked). Returns the thread id, the deletion's task and the event."""
    thread_id = await _born_in_an_outage(gw, proxy)
    registry = gw.manager.registry
    start_deletion = registry.start_deletion
    marked, go_on = asyncio.Event(), asyncio.Event()

    async def mark_then_wait(thread: str) -> str | None:
        started = await start_deletion(thread)
        marked.set()
        await go_on.wait()
        return started

    monkeypatch.setattr(registry, "start_deletion", mark_then_wait)
    deletion = asyncio.create_task(gw.delete_thread(thread_id))
    await marked.wait()
    await _outage_ends(gw, proxy)  # the copy-back, the thread marked meanwhile
    return thread_id, deletion, go_on


async def test_a_deletion_the_copy_back_cuts_short_leaves_the_thread_marked_not_rowless(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deletion in steps marks the thread first (start_deletion: ttl 0); of a thread
    # born in the outage, the fallback's row. The copy-back took the marked row for a
    # deleted one and left it (and its runs) out, its checkpoints in: when the deletion
    # then failed on the primary, PostgreSQL held checkpoints of a thread with no row.
    # As a deletion that fails on the primary does, it leaves the thread marked, and a
    # retry ends it.
    gw, proxy = proxied
    thread_id, deletion, go_on = await _marked_across_the_copy_back(gw, proxy, monkeypatch)
    proxy.refuse()
    go_on.set()
    with pytest.raises(BackendUnavailableError):
        await deletion
    await _outage_ends(gw, proxy)

    def count(table: str) -> object:
        sql = f"SELECT count(*) FROM {table} WHERE thread_id = %s"
        return rows(pg_database, sql, thread_id)[0][0]

    assert rows(
        pg_database, "SELECT ttl_seconds FROM code_hero_threads WHERE thread_id = %s", thread_id
    ) == [(0,)]
    assert count("code_hero_runs") == 1 and count("checkpoints") > 0
    assert await gw.get_thread(thread_id) is None  # marked: read as gone
    gone = await gw.delete_thread(thread_id)  # the client's retry ends it
    assert gone.deleted
    assert [count(t) for t in ("code_hero_threads", "checkpoints", "code_hero_runs")] == [0, 0, 0]


async def test_a_deletion_the_copy_back_overtakes_ends_on_postgresql(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The deletion of a thread born in the outage marked the fallback's row; the
    # copy-back takes the row to PostgreSQL as marked, with the mark's token, so the
    # deletion's last step, on PostgreSQL by then, finds the row its own and ends it.
    gw, proxy = proxied
    thread_id, deletion, go_on = await _marked_across_the_copy_back(gw, proxy, monkeypatch)
    go_on.set()

    gone = await deletion
    assert gone.deleted and gone.runs_deleted == 1 and gone.checkpoints_deleted > 0
    _assert_none_left(pg_database, thread_id)


def _copy_back_held_before_the_last_drain(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, asyncio.Event]:
    """Have the copy-back's first drain (writes go on) take the whole journal, then wait
    before the last drain and the switch. Returns (drained, switch): set when it waits,
    and to let it go on."""
    monkeypatch.setattr(recovery, "SMALL_REMAINDER", 0)  # the first drain takes it all
    gate = gw.manager.router.gate
    closed = gate.closed
    drained, switch = asyncio.Event(), asyncio.Event()

    @asynccontextmanager
    async def held_before_the_last_drain() -> AsyncIterator[None]:
        drained.set()
        await switch.wait()
        async with closed():
            yield

    monkeypatch.setattr(gate, "closed", held_before_the_last_drain)
    return drained, switch


async def _marked_between_the_drains(
    gw: Gateway, proxy: BlackHoleProxy, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, asyncio.Event, asyncio.Task[ThreadDeletion], asyncio.Event]:
    """A thread born in an outage, taken to PostgreSQL unmarked by the copy-back's first
    drain, which is held before the last until `switch` is set; then a deletion of it,
    held once it has marked the fallback's row (the router on the fallback still) until
    `go_on` is set. Returns the thread id, `switch`, the deletion's task and `go_on`."""
    thread_id = await _born_in_an_outage(gw, proxy)
    registry = gw.manager.registry
    drained, switch = _copy_back_held_before_the_last_drain(gw, monkeypatch)
    start_deletion = registry.start_deletion
    marked, go_on = asyncio.Event(), asyncio.Event()

    async def mark_then_wait(thread: str) -> str | None:
        started = await start_deletion(thread)
        marked.set()
        await go_on.wait()
        return started

    monkeypatch.setattr(registry, "start_deletion", mark_then_wait)
    proxy.forward()
    await asyncio.wait_for(drained.wait(), 30)  # its copy is in PostgreSQL, unmarked
    assert rows(
        pg_database, "SELECT count(*) FROM code_hero_threads WHERE thread_id = %s", thread_id
    ) == [(1,)]
    deletion = asyncio.create_task(gw.delete_thread(thread_id))
    await asyncio.wait_for(marked.wait(), 30)  # on the fallback: the switch is not made
    return thread_id, switch, deletion, go_on


async def test_a_deletion_marked_after_the_copy_back_took_its_thread_ends_on_postgresql(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the chaos audit (seed 56): the copy-back's first drain, while writes go
    # on, took a thread born in the outage to PostgreSQL; a deletion then marked the
    # fallback's row (the router on the fallback still), and nothing journalled the
    # mark. The switch came before its last step, which ran on PostgreSQL and found the
    # row not its own (a thread made anew, as it reads an unmarked row): it deleted
    # nothing and answered deleted false, and the thread stayed. The mark is journalled
    # as a copy of the thread, as every change to one born in the outage is.
    gw, proxy = proxied
    thread_id, switch, deletion, go_on = await _marked_between_the_drains(
        gw, proxy, pg_database, monkeypatch
    )
    switch.set()
    await until(lambda: _synced(gw))
    go_on.set()

    gone = await deletion  # its last step on PostgreSQL
    assert gone.deleted and gone.runs_deleted == 1
    _assert_none_left(pg_database, thread_id, EVERY_TABLE)


def _marks_refused(gw: Gateway, monkeypatch: pytest.MonkeyPatch, times: int) -> list[str]:
    """PostgreSQL refuses the first `times` copies of a thread's row that carry a
    deletion's mark (a lock timeout); returns the ids of the threads refused so far."""
    router = gw.manager.router
    assert router.primary.backend is not None
    registry = router.primary.backend.registry
    put_thread, copy_thread, refused = registry.put_thread, registry.copy_thread, []

    def refuse(thread: ThreadRecord) -> None:
        if thread.deletion_token is not None and len(refused) < times:
            refused.append(thread.thread_id)
            raise psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")

    async def refused_at_first(thread: ThreadRecord, **kw: Any) -> bool:
        refuse(thread)
        return await put_thread(thread, **kw)

    async def copy_refused_at_first(thread: ThreadRecord, *args: Any) -> bool:
        refuse(thread)
        return await copy_thread(thread, *args)

    monkeypatch.setattr(registry, "put_thread", refused_at_first)  # a late copy's
    monkeypatch.setattr(registry, "copy_thread", copy_refused_at_first)  # the drain's
    return refused


def _no_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """No retry of quarantined entries: they wait (the health check's retry skipped)."""

    async def no_retry(router: Any) -> None:
        pass

    monkeypatch.setattr("code_hero.persistence.fallback.retry_quarantined", no_retry)


@pytest.mark.parametrize("first", ["the retry", "the last step"])
async def test_a_deletion_whose_marked_copy_was_quarantined_ends_on_postgresql(
    proxied: tuple[Gateway, BlackHoleProxy],
    pg_database: str,
    monkeypatch: pytest.MonkeyPatch,
    first: str,
) -> None:
    # Seed 56's case with a second fault: PostgreSQL refused the copy that carries the
    # mark once (a lock timeout), so it was quarantined. Retried as a late copy, which
    # replaces no row the primary has, it left the first drain's unmarked row as it was,
    # and the deletion's last step answered deleted false and left the thread. A late
    # copy takes the mark now; a last step that comes before the retry drops the
    # quarantined copy with the thread's entries, so it carries the mark over first.
    # (The switch back carries it too, unless refused again: see the test below.)
    gw, proxy = proxied
    router = gw.manager.router
    thread_id, switch, deletion, go_on = await _marked_between_the_drains(
        gw, proxy, pg_database, monkeypatch
    )
    refused = _marks_refused(gw, monkeypatch, times=2)  # the drain's copy, the switch's
    if first == "the last step":
        _no_retry(monkeypatch)
    switch.set()
    await until(lambda: _synced(gw))
    assert refused == [thread_id, thread_id]
    if first == "the retry":
        await until(lambda: _settled(gw))
    else:
        assert router.quarantined and router.is_local(thread_id)  # kept across the switch
    go_on.set()

    gone = await deletion  # its last step on PostgreSQL
    assert gone.deleted and gone.runs_deleted == 1
    _assert_none_left(pg_database, thread_id, EVERY_TABLE)
    assert not router.quarantined and not router.is_local(thread_id)


def _an_edit_held_once_it_claimed(
    gw: Gateway, thread_id: str, values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Task[CheckpointView], asyncio.Event, asyncio.Event]:
    """An edit of the thread (updateState with `values`) held once it has claimed the
    thread, before it writes. Returns its task, and events: set when it is held, and to
    let it go on."""
    write = edits._write
    claimed, go_on = asyncio.Event(), asyncio.Event()

    async def claimed_then_wait(*args: Any) -> str:
        claimed.set()
        await go_on.wait()
        return await write(*args)

    monkeypatch.setattr(edits, "_write", claimed_then_wait)
    edit = asyncio.create_task(gw.update_state(UpdateState(thread_id, values)))
    return edit, claimed, go_on


def _edit_claim_live(pg_database: str, thread_id: str) -> bool:
    """Whether an edit's claim holds the thread in PostgreSQL."""
    sql = "SELECT coalesce(edit_until > now(), false) FROM code_hero_threads WHERE thread_id = %s"
    return rows(pg_database, sql, thread_id) == [(True,)]


async def test_an_edit_the_switch_back_falls_inside_holds_its_thread_on_postgresql(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An edit of a thread born in the outage claims it on the fallback; the copy-back
    # and the switch come before the edit writes. The claim stayed on the fallback, so
    # PostgreSQL let a run and a deletion through while the edit went on (the run would
    # start from the checkpoint the edit supersedes). The claim is journalled as a copy
    # of the thread, as every change to one born in the outage is, and the edit's
    # release, on PostgreSQL by then, ends it there.
    gw, proxy = proxied
    thread_id = await _born_in_an_outage(gw, proxy)
    edit, claimed, go_on = _an_edit_held_once_it_claimed(
        gw, thread_id, {"steps": ["by hand"]}, monkeypatch
    )
    await asyncio.wait_for(claimed.wait(), 30)
    await _outage_ends(gw, proxy)  # the switch, inside the edit

    with pytest.raises(ConflictError, match="being edited") as run_refused:
        await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}))
    with pytest.raises(ConflictError, match="being edited") as deletion_refused:
        await gw.delete_thread(thread_id)
    assert run_refused.value.retry_after == deletion_refused.value.retry_after == 1
    go_on.set()
    assert (await edit).values["steps"][-1] == "by hand"
    assert not _edit_claim_live(pg_database, thread_id)  # released, not left to lapse
    after = await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}, wait=True))
    assert after.status is RunStatus.SUCCESS


async def test_an_edit_released_after_the_copy_back_took_its_claim_frees_postgresql(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The copy-back's first drain (writes go on) takes the thread with the claim of an
    # edit in flight; the edit is then refused (a key the graph does not have: nothing
    # written, nothing settled) and releases the fallback's claim before the switch.
    # The release is journalled too: PostgreSQL would hold the claim until it lapsed,
    # refusing runs on a thread no edit holds.
    gw, proxy = proxied
    thread_id = await _born_in_an_outage(gw, proxy)
    edit, claimed, go_on = _an_edit_held_once_it_claimed(
        gw, thread_id, {"no such key": 1}, monkeypatch
    )
    await asyncio.wait_for(claimed.wait(), 30)
    drained, switch = _copy_back_held_before_the_last_drain(gw, monkeypatch)
    proxy.forward()
    await asyncio.wait_for(drained.wait(), 30)
    assert _edit_claim_live(pg_database, thread_id)  # the claim went with the thread
    go_on.set()
    with pytest.raises(BadInputError):
        await edit
    switch.set()
    await until(lambda: _synced(gw))

    assert not _edit_claim_live(pg_database, thread_id)
    after = await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}, wait=True))
    assert after.status is RunStatus.SUCCESS


@pytest.mark.parametrize("mark", ["carried", "refused again"])
async def test_no_run_is_admitted_on_a_thread_whose_mark_waits_in_the_quarantine(
    proxied: tuple[Gateway, BlackHoleProxy],
    pg_database: str,
    monkeypatch: pytest.MonkeyPatch,
    mark: str,
) -> None:
    # Review: the copy of a deletion's mark, refused, waited in the quarantine, and the
    # row PostgreSQL had was the first drain's, unmarked. From the switch back to the
    # retry or the deletion's last step, the thread read as live there and a run was
    # admitted on it; the last step then carried the mark and deleted the thread, that
    # run with it: acknowledged after the mark, deleted by it (and never stopped, had
    # the switch come after the deletion stopped the thread's runs). The switch back
    # carries the marks of kept threads to PostgreSQL before it serves; one PostgreSQL
    # refuses again refuses runs from the fallback's row until it is carried.
    gw, proxy = proxied
    router, registry = gw.manager.router, gw.manager.registry
    thread_id, switch, deletion, go_on = await _marked_between_the_drains(
        gw, proxy, pg_database, monkeypatch
    )
    refused = _marks_refused(gw, monkeypatch, times=1 if mark == "carried" else 2)
    _no_retry(monkeypatch)
    switch.set()
    await until(lambda: _synced(gw))
    assert router.quarantined and router.is_local(thread_id)
    monkeypatch.delattr(registry, "start_deletion")  # another deletion is not held
    if mark == "carried":
        assert await gw.get_thread(thread_id) is None  # marked: read as gone
        # The run's own reap ends the marked thread (it joins the deletion's mark): it
        # starts on a thread made anew, which the held deletion's last step leaves.
        run = await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}))
    else:
        assert len(refused) == 2
        with pytest.raises(ThreadBeingDeletedError):
            await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}))
    go_on.set()

    gone = await deletion  # its last step on PostgreSQL
    await until(lambda: _executing_none(gw))
    if mark == "carried":
        assert rows(
            pg_database, "SELECT thread_id FROM code_hero_runs WHERE run_id = %s", run.run_id
        ) == [(thread_id,)]
    else:
        assert gone.deleted and gone.runs_deleted == 1
        _assert_none_left(pg_database, thread_id, EVERY_TABLE)
        again = await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}, wait=True))
        assert again.status is RunStatus.SUCCESS  # refused no more: a thread made anew
    assert not router.quarantined and not router.is_local(thread_id)


async def test_a_deletions_last_step_leaves_a_thread_another_replica_made_anew(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review: the mark refused at the drain and at the switch back waits on the
    # fallback's row; meanwhile another replica deletes the thread on PostgreSQL and a
    # client makes it anew under the id. The deletion's last step carried its mark onto
    # the new row (`_carry_mark`) and deleted the new thread. The mark goes only onto a
    # row created when the fallback's was.
    gw, proxy = proxied
    router = gw.manager.router
    thread_id, switch, deletion, go_on = await _marked_between_the_drains(
        gw, proxy, pg_database, monkeypatch
    )
    _marks_refused(gw, monkeypatch, times=2)  # the drain's copy, the switch's
    _no_retry(monkeypatch)
    switch.set()
    await until(lambda: _synced(gw))
    assert router.primary.backend is not None
    primary = router.primary.backend
    other = await primary.registry.start_deletion(thread_id)  # another replica's
    assert other is not None
    await primary.delete_checkpoints(thread_id)
    assert (await primary.registry.delete_thread(thread_id, marked=other.token))[0]
    now = datetime.now(UTC)
    made_anew = ThreadRecord(thread_id, "u2", ThreadStatus.IDLE, {"new": True}, now, now)
    await primary.registry.put_thread(made_anew)
    go_on.set()

    gone = await deletion  # its last step on PostgreSQL: the old thread went before it
    assert (gone.checkpoints_deleted, gone.runs_deleted) == (0, 0)
    assert await gw.get_thread(thread_id) == made_anew


async def test_an_edit_claimed_between_the_drains_holds_its_thread_on_postgresql(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The copy-back's first drain (writes go on) took a thread born in the outage, and
    # an edit then claims it on the fallback (the switch is not made); the switch comes
    # inside the edit. The thread's copy is in PostgreSQL already, and nothing else
    # journals one: the claim journals its own, or PostgreSQL admits runs while the edit
    # writes.
    gw, proxy = proxied
    thread_id = await _born_in_an_outage(gw, proxy)
    drained, switch = _copy_back_held_before_the_last_drain(gw, monkeypatch)
    proxy.forward()
    await asyncio.wait_for(drained.wait(), 30)  # the first drain took the thread
    edit, claimed, go_on = _an_edit_held_once_it_claimed(
        gw, thread_id, {"steps": ["by hand"]}, monkeypatch
    )
    await asyncio.wait_for(claimed.wait(), 30)
    switch.set()
    await until(lambda: _synced(gw))

    assert _edit_claim_live(pg_database, thread_id)
    with pytest.raises(ConflictError, match="being edited"):
        await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}))
    go_on.set()
    assert (await edit).values["steps"][-1] == "by hand"
    assert not _edit_claim_live(pg_database, thread_id)  # released on PostgreSQL


async def test_a_full_journal_refuses_new_writes_and_health_says_why(pg_database: str) -> None:
    async with behind_a_proxy(pg_database, max_pending_sync=12) as (gw, proxy):
        await _outage_begins(gw, proxy)
        first = await gw.start_run(StartRun(graph="slow", input={}, wait=True))
        assert first.status is RunStatus.ERROR  # the journal filled up mid-run
        # Its error says why the run stopped, what is kept, what to do, and which limit.
        error = first.error or ""
        assert "journal is full" in error and "CODE_HERO_MAX_PENDING_SYNC" in error
        assert "the run stopped" in error and "start it again" in error
        with pytest.raises(BackendUnavailableError, match="journal is full"):
            await gw.start_run(StartRun(graph="slow", input={}))
        health = await gw.health()
        fallback = health["fallback_checkpointer"]
        assert "journal is full" in (fallback["last_error"] or "")
        await _outage_ends(gw, proxy)
        # The README promises no more: the run stays ERROR, with its steps until then.
        assert await gw.get_run(first.run_id) == first
        again = await gw.start_run(StartRun(graph="slow", input={}, wait=True))
        assert again.status is RunStatus.SUCCESS


async def _status_is(gw: Gateway, run_id: str, status: RunStatus) -> bool:
    run = await gw.get_run(run_id)
    return run is not None and run.status is status


async def _has_checkpoints(gw: Gateway, thread_id: str) -> bool:
    latest = await gw.get_checkpoint(thread_id)
    return latest is not None and bool(latest.values.get("steps"))


async def _degraded(gw: Gateway) -> bool:
    return gw.manager.overall_status == "degraded"


async def _executing_none(gw: Gateway) -> bool:
    return not gw.services.executor.active_runs


async def _synced(gw: Gateway) -> bool:
    return gw.manager.overall_status == "healthy" and gw.manager.pending_sync == 0


async def _settled(gw: Gateway) -> bool:
    return not gw.manager.router.quarantined


@pytest.mark.parametrize("cut", ["claimed", "reading its thread"])
async def test_a_run_claimed_just_before_an_outage_starts_once_postgres_is_back(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str, cut: str
) -> None:
    # Found by the chaos audit (seed 13): a run admitted and leased in PostgreSQL just
    # before it became unreachable could not start on the fallback (its thread and rows
    # are in PostgreSQL only), stayed PENDING and leased until the lease lapsed after
    # the recovery, and startRun(wait: true) had no answer meanwhile. Released (the
    # release journalled), it answers UNAVAILABLE and runs as soon as PostgreSQL is back.
    gw, proxy = long_leased
    executor, router = gw.executor, gw.manager.router
    launched: list[str] = []
    if cut == "claimed":
        launch = executor.launch

        def cut_then_launch(record: RunRecord, *, resuming: bool) -> None:
            launched.append(record.run_id)
            proxy.refuse()  # leased in PostgreSQL; the primary goes before the run starts
            del executor.launch  # type: ignore[method-assign]
            launch(record, resuming=resuming)

        executor.launch = cut_then_launch  # type: ignore[method-assign]
    else:
        read_tuple = router.read_tuple

        async def cut_then_read(config: Any) -> Any:
            launched.append(config["configurable"]["run_id"])
            proxy.refuse()  # it is RUNNING in PostgreSQL; the graph reads its thread
            del router.read_tuple  # type: ignore[method-assign]
            return await read_tuple(config)

        router.read_tuple = cut_then_read  # type: ignore[method-assign]
    # On a thread that was there: a run on a thread made for it reads none at its start.
    there = None if cut == "claimed" else (await gw.create_thread(caller=ANONYMOUS)).thread_id

    with pytest.raises(BackendUnavailableError, match="unreachable") as caught:
        await asyncio.wait_for(
            gw.start_run(StartRun(graph="slow", input={}, thread_id=there, wait=True)), 30
        )
    assert caught.value.code == "UNAVAILABLE" and caught.value.retry_after >= 1
    (run_id,) = launched
    # The run is recorded: the client is told which, to follow it rather than start another.
    assert caught.value.extensions == {"retryAfter": caught.value.retry_after, "runId": run_id}
    assert not executor.is_active(run_id)
    # Journalled as a release of this executor's own lease, which leaves alone a lease
    # another replica may take meanwhile (test_entries).
    released = [(e.run_id, e.owner) for e in router.journal.entries if isinstance(e, ReleaseRun)]
    assert released == [(run_id, executor.owner)]

    await _outage_ends(gw, proxy)
    final = await executor.wait(run_id, limit=60)  # a lease of 600 s: not its lapse
    assert final.status is RunStatus.SUCCESS, final
    assert final.output["steps"] == SLOW_STEPS
    statuses = rows(
        pg_database,
        "SELECT seq, payload->>'status' FROM code_hero_run_events "
        "WHERE run_id = %s AND type = 'status' ORDER BY seq",
        run_id,
    )
    # What it stored on the fallback before it was released (RUNNING, when the cut came
    # as it read its thread) was copied back, and numbering went on after it.
    assert statuses[:2] == [(1, "PENDING"), (2, "RUNNING")] and statuses[-1][1] == "SUCCESS"
    seqs = rows(
        pg_database, "SELECT seq FROM code_hero_run_events WHERE run_id = %s ORDER BY seq", run_id
    )
    assert [s for (s,) in seqs] == list(range(1, len(seqs) + 1))
    assert rows(
        pg_database, "SELECT status FROM code_hero_threads WHERE thread_id = %s", final.thread_id
    ) == [(ThreadStatus.IDLE.value,)]


async def test_a_cancel_that_arrives_as_the_outage_error_is_not_turned_into_a_restart(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str
) -> None:
    # On Python 3.11 asyncio.wait_for (psycopg_pool's getconn) can hand back the inner
    # error in place of a pending cancel: the run meets "the primary is unreachable"
    # with its cancel already asked. Released for the outage as if nothing was asked,
    # it started again after the recovery and ran to SUCCESS; now its cancel is kept
    # and it ends CANCELLED once PostgreSQL is back.
    gw, proxy = long_leased
    executor, router = gw.executor, gw.manager.router
    read_tuple = router.read_tuple
    launched: list[str] = []

    async def cancelled_then_cut(config: Any) -> Any:
        run_id = config["configurable"]["run_id"]
        launched.append(run_id)
        executor._cancel_requested.add(run_id)  # what cancel() records before it stops
        proxy.refuse()
        del router.read_tuple  # type: ignore[method-assign]
        return await read_tuple(config)  # raises the outage's error, not CancelledError

    router.read_tuple = cancelled_then_cut  # type: ignore[method-assign]
    # On a thread that was there: a run on a thread made for it reads none at its start.
    there = (await gw.create_thread(caller=ANONYMOUS)).thread_id
    with pytest.raises(BackendUnavailableError):
        await asyncio.wait_for(
            gw.start_run(StartRun(graph="slow", input={}, thread_id=there, wait=True)), 30
        )
    (run_id,) = launched
    await _outage_ends(gw, proxy)
    final = await executor.wait(run_id, limit=60)
    assert final.status is RunStatus.CANCELLED, final
    assert rows(pg_database, "SELECT status FROM code_hero_runs WHERE run_id = %s", run_id) == [
        (RunStatus.CANCELLED.value,)
    ]


def _cut_as_it_launches(
    gw: Gateway, proxy: BlackHoleProxy, then: Callable[[str], None] | None = None
) -> list[str]:
    """The primary goes as the next run is launched (leased in PostgreSQL, before it
    starts), and `then` is called with its id once launched; the list gets its id."""
    executor = gw.executor
    launch = executor.launch
    launched: list[str] = []

    def cut_then_launch(record: RunRecord, *, resuming: bool) -> None:
        launched.append(record.run_id)
        proxy.refuse()
        del executor.launch  # type: ignore[method-assign]
        launch(record, resuming=resuming)
        if then is not None:
            then(record.run_id)

    executor.launch = cut_then_launch  # type: ignore[method-assign]
    return launched


async def test_a_cancel_of_a_run_the_outage_holds_answers_at_once(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str
) -> None:
    # Found by the outage audit (a real `serve`, PostgreSQL stopped): cancelRun of a run
    # claimed just before the outage (released for it, its rows in PostgreSQL only)
    # recorded its cancel, then waited 5 s plus a lease (20 s by default) for an end
    # nothing could record before the database was back, and answered the run unchanged
    # (PENDING). Now it answers UNAVAILABLE at once, naming the run and saying its cancel
    # is recorded; the run ends CANCELLED once PostgreSQL is back.
    gw, proxy = long_leased
    executor = gw.executor
    launched = _cut_as_it_launches(gw, proxy)
    with pytest.raises(RunHeldUpError):
        await asyncio.wait_for(gw.start_run(StartRun(graph="slow", input={}, wait=True)), 30)
    (run_id,) = launched

    began = time.monotonic()
    with pytest.raises(RunHeldUpError, match="cancel is recorded") as caught:
        await asyncio.wait_for(gw.cancel_run(run_id), 30)
    assert time.monotonic() - began < 3
    assert caught.value.code == "UNAVAILABLE" and caught.value.retry_after >= 1
    assert caught.value.extensions == {"retryAfter": caught.value.retry_after, "runId": run_id}

    await _outage_ends(gw, proxy)
    final = await executor.wait(run_id, limit=60)  # a lease of 600 s: not its lapse
    assert final.status is RunStatus.CANCELLED, final
    assert rows(pg_database, "SELECT status FROM code_hero_runs WHERE run_id = %s", run_id) == [
        (RunStatus.CANCELLED.value,)
    ]


async def test_a_run_stream_whose_run_the_outage_holds_names_the_run(
    long_leased: tuple[Gateway, BlackHoleProxy],
) -> None:
    # Found by the outage audit (a real `serve`, PostgreSQL stopped as runStream began):
    # the run was recorded, held for the outage and ran once the database was back, but
    # runStream answered UNAVAILABLE without naming it (reading its events needs the
    # database), so a client retrying runStream started a second run. Now the error names
    # the run (`extensions.runId`), as startRun(wait: true)'s does.
    gw, proxy = long_leased
    executor = gw.executor
    launched = _cut_as_it_launches(gw, proxy)
    stream = await gw.stream_run(StartRun(graph="slow", input={}))
    with pytest.raises(RunHeldUpError, match="follow that run") as caught:
        await asyncio.wait_for(collect(stream), 30)
    (run_id,) = launched
    assert caught.value.code == "UNAVAILABLE" and caught.value.retry_after >= 1
    assert caught.value.extensions == {"retryAfter": caught.value.retry_after, "runId": run_id}

    await _outage_ends(gw, proxy)
    final = await executor.wait(run_id, limit=60)  # a lease of 600 s: not its lapse
    assert final.status is RunStatus.SUCCESS, final  # the run the error named, the only one
    runs = await gw.runs_page(RunFilter(thread_id=final.thread_id))
    assert [run.run_id for run in runs.items] == [run_id]


async def test_a_waiter_for_a_run_not_claimed_yet_is_told_which_run_the_outage_holds(
    long_leased: tuple[Gateway, BlackHoleProxy],
) -> None:
    # startRun(wait: true) for a run admitted in PostgreSQL but not claimed here yet:
    # the outage came while it waited and its reading of the run answered UNAVAILABLE
    # without saying which run was recorded, so a client retrying started a second.
    gw, proxy = long_leased
    gw.executor.claims.max_concurrent = 0  # admitted, never claimed here
    started = asyncio.create_task(gw.start_run(StartRun(graph="slow", input={}, wait=True)))
    await asyncio.sleep(0.3)  # admitted and polled: the waiter reads the run now and then
    assert not started.done()
    proxy.refuse()
    with pytest.raises(RunHeldUpError) as caught:
        await asyncio.wait_for(started, 30)
    run_id = caught.value.extensions["runId"]
    assert caught.value.code == "UNAVAILABLE" and caught.value.retry_after >= 1
    await _outage_ends(gw, proxy)
    found = await gw.get_runs([str(run_id)])
    assert found[str(run_id)].status is RunStatus.PENDING  # recorded, as the error said


@pytest.mark.parametrize("when", ["before its first step", "as it reads its events"])
async def test_a_run_cancelled_as_it_starts_in_an_outage_ends_cancelled_after_it(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str, when: str
) -> None:
    # Claimed just before the outage and cancelled as it started: recording CANCELLED
    # needs the primary (the run's event numbering is there), and the error escaped the
    # run's task ("Task exception was never retrieved"): the run stayed PENDING, leased
    # for 600 s, its cancel lost. Now the cancel is journalled with the lease's release.
    gw, proxy = long_leased
    executor = gw.executor
    stop = executor.stop if when == "before its first step" else None
    launched = _cut_as_it_launches(gw, proxy, then=stop)
    if when == "as it reads its events":
        # Its look for its events' numbering goes with its RUNNING update (`start_run`).
        registry = executor.registry
        start_run = registry.start_run

        async def cancelled_in_start(run_id: str, started_at: Any) -> Any:
            del registry.start_run  # type: ignore[attr-defined]
            executor.stop(run_id)
            await asyncio.sleep(0)  # the cancel lands here, before any event is written
            return await start_run(run_id, started_at)

        registry.start_run = cancelled_in_start  # type: ignore[method-assign]
    with pytest.raises(BackendUnavailableError):
        await asyncio.wait_for(gw.start_run(StartRun(graph="slow", input={}, wait=True)), 30)
    (run_id,) = launched
    await _outage_ends(gw, proxy)
    final = await executor.wait(run_id, limit=60)  # a lease of 600 s: not its lapse
    assert final.status is RunStatus.CANCELLED, final


async def _a_thread_kept_across_a_recovery(gw: Gateway, proxy: BlackHoleProxy) -> str:
    """A thread born in an outage with an entry PostgreSQL refuses (a checkpoint in a
    namespace with a NUL): it stays local after the recovery."""
    router = gw.manager.router
    await _outage_begins(gw, proxy)
    thread_id = (await gw.start_run(StartRun(graph="slow", input={}, wait=True))).thread_id
    # Memory takes a NUL in a namespace; PostgreSQL's text columns never will.
    poison = {"configurable": {"thread_id": thread_id, "checkpoint_ns": "poison\x00"}}
    await gw.manager.get_checkpointer().aput(poison, empty_checkpoint(), {}, {})
    await _outage_ends(gw, proxy)
    assert router.quarantined and router.is_local(thread_id)  # kept across the recovery
    return thread_id


async def _a_run_cut_by_a_second_outage(
    gw: Gateway, proxy: BlackHoleProxy, thread_id: str, monkeypatch: pytest.MonkeyPatch
) -> RunRecord:
    """A run started on the thread while PostgreSQL serves, its checkpoints held until
    a second outage begins; it ends in that outage, and PostgreSQL comes back."""
    # The run's checkpoints wait for the second outage.
    reached, go_on = held_writes(monkeypatch, gw.manager.router, lambda thread: thread == thread_id)
    run = await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}))
    await asyncio.wait_for(reached.wait(), 30)
    assert gw.executor.is_active(run.run_id)
    await _outage_begins(gw, proxy)
    go_on.set()
    await until(lambda: _executing_none(gw))
    await _outage_ends(gw, proxy)
    return run


async def test_a_run_started_on_a_kept_thread_between_outages_ends_in_postgres(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run started on a thread kept local after a recovery, once PostgreSQL serves
    # again, is PostgreSQL's alone: executing when a second outage starts, it was taken
    # for one deleted with its thread (the fallback lacks it), its end never journalled;
    # it stayed RUNNING and leased in PostgreSQL, to run again once the lease lapsed.
    gw, proxy = long_leased
    thread_id = await _a_thread_kept_across_a_recovery(gw, proxy)
    run = await _a_run_cut_by_a_second_outage(gw, proxy, thread_id, monkeypatch)
    stored = rows(
        pg_database,
        "SELECT status, lease_owner FROM code_hero_runs WHERE run_id = %s",
        run.run_id,
    )
    assert stored == [(RunStatus.SUCCESS.value, None)]


def _checkpoints_in_pg(pg_database: str, thread_id: str) -> int:
    ((n,),) = rows(pg_database, "SELECT count(*) FROM checkpoints WHERE thread_id = %s", thread_id)
    return int(n)


async def test_deleting_a_kept_thread_counts_the_checkpoints_postgresql_had(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str
) -> None:
    # A thread kept across a recovery writes its new checkpoints to PostgreSQL alone,
    # its outage's stay on the fallback too. Its deletion counted the fallback's only
    # (the primary's own count, from its delete, went unused): the runs since were
    # deleted uncounted. The router counts the primary's and the fallback's own.
    gw, proxy = proxied
    thread_id = await _a_thread_kept_across_a_recovery(gw, proxy)
    for _ in range(3):  # runs after the switch: their checkpoints are PostgreSQL's alone
        run = await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}, wait=True))
        assert run.status is RunStatus.SUCCESS
    in_pg = _checkpoints_in_pg(pg_database, thread_id)
    gone = await gw.delete_thread(thread_id)
    _assert_none_left(pg_database, thread_id, ("checkpoints",))
    # The poisoned one never reached PostgreSQL; the outage's run's did (copied back).
    assert gone.checkpoints_deleted == in_pg + 1


async def test_two_deletions_of_one_mark_on_a_kept_thread_count_its_checkpoints_once(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two deletions of a thread kept across a recovery, one joining the other's mark:
    # each counted the fallback's checkpoints before either deleted them, and both
    # answered them deleted. The router counts them under the step lock: once.
    gw, proxy = proxied
    thread_id = await _a_thread_kept_across_a_recovery(gw, proxy)
    manager = gw.manager
    in_pg = _checkpoints_in_pg(pg_database, thread_id)
    start_deletion = manager.start_deletion
    marks: list[DeletionMark] = []
    both_marked = asyncio.Event()

    async def marked_then_wait(thread: str) -> DeletionMark | None:
        mark = await start_deletion(thread)
        assert mark is not None
        marks.append(mark)
        if len(marks) == 2:
            both_marked.set()
        await both_marked.wait()
        return mark

    monkeypatch.setattr(manager, "start_deletion", marked_then_wait)
    a, b = await asyncio.gather(gw.delete_thread(thread_id), gw.delete_thread(thread_id))
    assert marks[0].token == marks[1].token  # one joined the other's mark
    assert a.deleted and b.deleted
    # The poisoned one never reached PostgreSQL: one more than it had.
    assert a.checkpoints_deleted + b.checkpoints_deleted == in_pg + 1


def _cut_at_its_end(registry: Any, proxy: BlackHoleProxy) -> None:
    """The next run end this process records cuts PostgreSQL off first: it meets the outage."""
    finish_run = registry.finish_run

    async def cut_then_finish(run_id: str, *args: Any, **kw: Any) -> Any:
        proxy.refuse()
        del registry.finish_run
        return await finish_run(run_id, *args, **kw)

    registry.finish_run = cut_then_finish


def _taken_over_by_b(pg_database: str, run_id: str, *, for_an_hour: bool = False) -> None:
    """Replica B takes the run over in PostgreSQL (`for_an_hour`: with a lease of its own)."""
    lease = ", lease_expires_at = now() + interval '1 hour'" if for_an_hour else ""
    sql = (
        f"UPDATE code_hero_runs SET lease_owner = 'replica-b'{lease} WHERE run_id = %s RETURNING 1"
    )
    rows(pg_database, sql, run_id)


async def _lapsing_at(executor: Any, run_id: str, lapses: datetime) -> None:
    """This executor's last renewal sets the run's lease to lapse at `lapses`, as it knows it."""
    assert await executor.registry.renew_leases(executor.owner, [run_id], lapses)
    executor.claims._expires[run_id] = lapses


async def test_an_end_journalled_in_an_outage_leaves_a_run_taken_over_meanwhile(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str
) -> None:
    # A run whose end met the outage is ended from the copy this executor holds, and
    # the end is journalled under the lease it ran under. It was journalled under the
    # lease its end clears (none), so once PostgreSQL was back it ended the run another
    # replica had taken over meanwhile, and was executing.
    gw, proxy = long_leased
    executor = gw.executor
    registry = executor.registry
    _cut_at_its_end(registry, proxy)
    final = await asyncio.wait_for(gw.start_run(StartRun(graph="slow", input={}, wait=True)), 30)
    assert final.status is RunStatus.SUCCESS
    ended = [e for e in gw.manager.router.journal.entries if isinstance(e, FinishRun)]
    assert [(e.run_id, e.owner) for e in ended] == [(final.run_id, executor.owner)]
    # Its last events, its end's among them, are journalled with the end: not copied
    # to PostgreSQL unless the end applies there.
    assert ended[0].events[-1].payload["status"] == RunStatus.SUCCESS.value
    # Meanwhile, replica B takes the run over in PostgreSQL (A's lease counted as lapsed).
    _taken_over_by_b(pg_database, final.run_id)
    await _outage_ends(gw, proxy)
    assert rows(
        pg_database,
        "SELECT status, lease_owner FROM code_hero_runs WHERE run_id = %s",
        final.run_id,
    ) == [(RunStatus.RUNNING.value, "replica-b")]
    ends = rows(
        pg_database,
        "SELECT seq FROM code_hero_run_events WHERE run_id = %s AND type = 'status' "
        "AND payload->>'status' NOT IN ('PENDING', 'RUNNING')",
        final.run_id,
    )
    assert ends == [], "B's log has no end of A's"


@pytest.mark.parametrize("cut", ["at its end", "in its steps"])
async def test_a_run_ended_in_an_outage_is_followed_to_its_end_in_it(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str, cut: str
) -> None:
    # A run from before the outage, ended in it: its last events were journalled with
    # its end alone, and once its writer was gone the fallback had none of them. A
    # follower that had read what PostgreSQL stored was refused (the fallback had no
    # event of the run), or read what the fallback had, found the run ended and its
    # stream closed without the last events and the end, until the recovery.
    gw, proxy = long_leased
    executor, registry = gw.executor, gw.executor.registry
    gw.events.flush_interval = 3600  # no batch unless flushed here: the rest is the end's
    if cut == "at its end":
        _cut_at_its_end(registry, proxy)
    else:
        stream, flushes = executor._stream, []

        async def cut_in_steps(record: RunRecord, writer: Any, *args: Any) -> Any:
            emit = writer.emit

            def cut_then_emit(*a: Any) -> Any:
                event = emit(*a)
                if not flushes:  # its events so far go to the fallback; the rest: the end's
                    proxy.refuse()
                    flushes.append(asyncio.create_task(gw.events.flush()))
                return event

            writer.emit = cut_then_emit
            return await stream(record, writer, *args)

        executor._stream = cut_in_steps  # type: ignore[method-assign]
    final = await asyncio.wait_for(gw.start_run(StartRun(graph="slow", input={}, wait=True)), 30)
    assert final.status is RunStatus.SUCCESS
    ((end,),) = [[e for e in gw.manager.router.journal.entries if isinstance(e, FinishRun)]]
    seen = [s for (s,) in rows(
        pg_database, "SELECT seq FROM code_hero_run_events WHERE run_id = %s", final.run_id
    )]  # fmt: skip
    assert seen == [1]  # PENDING, stored with the run
    followed = await asyncio.wait_for(collect(await gw.follow_run(final.run_id, after_seq=1)), 30)
    last = end.events[-1].seq
    assert [e.seq for e in followed] == list(range(2, last + 1))
    assert followed[-len(end.events) :] == list(end.events)
    if cut == "in its steps":  # the fallback had the others
        assert len(followed) > len(end.events)
    assert (followed[-1].type, followed[-1].payload["status"]) == ("status", "SUCCESS")

    await _outage_ends(gw, proxy)
    assert registry.internal_sizes()["registry.ended"] == 0
    assert rows(
        pg_database,
        "SELECT seq FROM code_hero_run_events WHERE run_id = %s ORDER BY seq",
        final.run_id,
    ) == [(seq,) for seq in range(1, last + 1)]


@pytest.mark.parametrize("then", ["kept", "taken over", "released"])
async def test_a_run_cancelled_here_in_an_outage_stays_cancelled_wherever_it_went(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str, then: str
) -> None:
    # A cancel of a run executing here stops it at once, with no flag on its row: in an
    # outage its end alone was journalled, under this executor's lease. Taken over
    # meanwhile by replica B (A's lease lapsed there), the run had that end dropped at
    # replay and B ran it on to SUCCESS; released by B, it was claimed and resumed.
    # The cancel flag is journalled after the end: B stops it at its next renewal, a
    # released run is ended CANCELLED (claim_cancelled), and one still A's ends once.
    gw, proxy = long_leased
    executor, router = gw.executor, gw.manager.router
    run = await gw.start_run(StartRun(graph="slow", input={"delay": 5}))
    await until(lambda: _status_is(gw, run.run_id, RunStatus.RUNNING))
    await _outage_begins(gw, proxy)
    cancelled = await asyncio.wait_for(gw.cancel_run(run.run_id), 30)
    assert cancelled.status is RunStatus.CANCELLED
    journalled = [
        (type(e).__name__, getattr(e, "owner", None), dict(getattr(e, "fields", {})))
        for e in router.journal.entries
        if isinstance(e, (ChangeRun, FinishRun)) and e.run_id == run.run_id
    ]
    assert journalled[-2:] == [
        ("FinishRun", executor.owner, journalled[-2][2]),
        ("ChangeRun", None, {"cancel_requested": True}),
    ]
    assert journalled[-2][2]["status"] == RunStatus.CANCELLED
    if then == "taken over":  # replica B (not started: its renewal is the flag's reader)
        sql = "UPDATE code_hero_runs SET lease_owner = 'replica-b' WHERE run_id = %s RETURNING 1"
    elif then == "released":  # by B: claimable, as after a drain
        sql = (
            "UPDATE code_hero_runs SET lease_owner = NULL, lease_expires_at = NULL "
            "WHERE run_id = %s RETURNING 1"
        )
    if then != "kept":
        rows(pg_database, sql, run.run_id)
    await _outage_ends(gw, proxy)

    def stored() -> list[tuple[object, ...]]:
        return rows(
            pg_database,
            "SELECT status, lease_owner, cancel_requested FROM code_hero_runs WHERE run_id = %s",
            run.run_id,
        )

    if then == "taken over":
        assert stored() == [(RunStatus.RUNNING.value, "replica-b", True)]
        return

    async def ended() -> bool:
        return stored()[0][0] not in (RunStatus.PENDING.value, RunStatus.RUNNING.value)

    await until(ended)
    assert stored()[0][:2] == (RunStatus.CANCELLED.value, None)
    ends = rows(
        pg_database,
        "SELECT payload->>'status' FROM code_hero_run_events WHERE run_id = %s "
        "AND type = 'status' AND payload->>'status' NOT IN ('PENDING', 'RUNNING')",
        run.run_id,
    )
    assert ends == [(RunStatus.CANCELLED.value,)] * (1 if then == "kept" else len(ends))


@pytest.mark.parametrize("seen", ["replica-b", None])
async def test_an_end_in_an_outage_is_journalled_under_the_lease_this_executor_claimed(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str, seen: str | None
) -> None:
    # Replica B took the run over in PostgreSQL just after A claimed it, and A's next
    # write (RUNNING) read B's row back before any renewal told A: A's copy named B (or,
    # released by B, no one). A's end in the outage was journalled under that owner, so
    # it passed the lease check at replay and ended B's live run (or, with no owner,
    # applied with no lease check). Now A's end, made under the lease A claimed, is
    # refused: the run is not A's as far as A knows, nothing is journalled, and the
    # waiter is told the run is recorded but held up (it follows the run).
    gw, proxy = long_leased
    executor = gw.executor
    registry = executor.registry
    start_run = registry.start_run  # the RUNNING write

    async def taken_over_then_start(run_id: str, started_at: Any) -> Any:
        del registry.start_run  # type: ignore[attr-defined]
        rows(
            pg_database,
            "UPDATE code_hero_runs SET lease_owner = %s WHERE run_id = %s RETURNING 1",
            seen,
            run_id,
        )
        record, last = await start_run(run_id, started_at)
        assert record is not None and record.lease_owner == seen
        # The outage begins before any of A's events is stored: in PostgreSQL, a batch
        # of them would find the run B's (or no one's) and fence A's writer at once.
        proxy.refuse()
        return record, last

    registry.start_run = taken_over_then_start  # type: ignore[method-assign]
    with pytest.raises(RunHeldUpError) as held:
        await asyncio.wait_for(gw.start_run(StartRun(graph="slow", input={}, wait=True)), 30)
    run_id = held.value.run_id
    ended = [e for e in gw.manager.router.journal.entries if isinstance(e, FinishRun)]
    assert ended == []
    await _outage_ends(gw, proxy)
    if seen is None:
        return  # claimable now PostgreSQL is back: the next claimer records its end
    assert rows(
        pg_database,
        "SELECT status, lease_owner FROM code_hero_runs WHERE run_id = %s",
        run_id,
    ) == [(RunStatus.RUNNING.value, "replica-b")]


@pytest.mark.parametrize(
    ("noticed", "cancelled", "fenced"),
    [(True, False, False), (False, False, False), (True, True, False), (True, False, True)],
    ids=["outage-noticed", "noticed-by-its-end", "cancelled-here", "its-writer-fenced"],
)
async def test_a_run_taken_over_before_the_outage_is_held_in_it_not_ended_here(
    long_leased: tuple[Gateway, BlackHoleProxy],
    pg_database: str,
    noticed: bool,
    cancelled: bool,
    fenced: bool,
) -> None:
    # A's lease lapsed (A stalled) and replica B took the run over in PostgreSQL before
    # the outage; A, unaware, ended the run in the outage from the copy it held, which
    # named A still: startRun(wait: true) was told SUCCESS, and once PostgreSQL was
    # back the replay refused that end (B's lease), so it was never recorded. Now the
    # run is held for the outage: nothing of its end is journalled, the waiter is told
    # the run is held up, and B's run is untouched after the recovery (but for a cancel
    # asked here, passed on to B).
    gw, proxy = long_leased
    executor = gw.executor
    registry = executor.registry
    stream = executor._stream

    async def stream_then_stall(record: RunRecord, *args: Any) -> Any:
        ended = await stream(record, *args)
        # The stall: A's last renewal set a lease that lapsed an hour ago, as A knows it.
        # B claims the lapsed run (no claim pass of A's meanwhile: A is asleep); then
        # the outage begins, before A wakes. The UPDATE in a thread: the run's event
        # writer may hold its row (a flush) and needs the loop to go on.
        lapsed = datetime.now(UTC) - timedelta(hours=1)
        async with executor.claims._claiming:
            await _lapsing_at(executor, record.run_id, lapsed)
            await asyncio.to_thread(_taken_over_by_b, pg_database, record.run_id, for_an_hour=True)
        if fenced:
            # A flush of its events reached PostgreSQL after B's takeover, before the
            # outage (under load, the thread's UPDATE outlasts a flush tick): the store
            # found the run B's and fenced the writer, so its end is not attempted here
            # (no end, no renewal asks the registry). This process executes it no longer
            # all the same: the registry forgets it (it kept the run as executing here).
            writer = args[0]
            writer.emit(EventType.CUSTOM, {"by": "a"})
            await writer.flush()
            assert writer.lost
        proxy.refuse()
        if noticed:
            await until(lambda: _degraded(gw))
        if cancelled:  # as it ended: what cancel() records before it stops the run
            executor._cancel_requested.add(record.run_id)
            return RunStatus.CANCELLED, None, None
        return ended

    executor._stream = stream_then_stall  # type: ignore[method-assign]
    with pytest.raises(RunHeldUpError) as held:
        await asyncio.wait_for(gw.start_run(StartRun(graph="slow", input={}, wait=True)), 30)
    run_id = held.value.run_id
    assert held.value.extensions["runId"] == run_id
    entries = [
        e
        for e in gw.manager.router.journal.entries
        if isinstance(e, FinishRun | ChangeRun) and e.run_id == run_id
    ]
    assert not [e for e in entries if isinstance(e, FinishRun)]
    # (Its timeline may be journalled under A's lease: refused at replay, as B holds it.)
    passed_on = [dict(e.fields) for e in entries if e.owner is None]
    assert passed_on == ([{"cancel_requested": True}] if cancelled else [])
    await _outage_ends(gw, proxy)
    assert rows(
        pg_database,
        "SELECT status, lease_owner, cancel_requested FROM code_hero_runs WHERE run_id = %s",
        run_id,
    ) == [(RunStatus.RUNNING.value, "replica-b", cancelled)]
    ends = rows(  # no end of A's in B's run's events either
        pg_database,
        "SELECT payload->>'status' FROM code_hero_run_events WHERE run_id = %s "
        "AND type = 'status' AND payload->>'status' NOT IN ('PENDING', 'RUNNING')",
        run_id,
    )
    assert ends == []
    for sizes in (executor.internal_sizes(), registry.internal_sizes()):  # none kept
        assert sizes == dict.fromkeys(sizes, 0)


async def test_a_run_whose_lease_lapsed_in_a_stall_after_the_last_probe_is_held_in_it(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str
) -> None:
    # A stalled (SIGSTOP, a long GC) past its run's lease after the primary's last answer
    # to it; replica B took the run over meanwhile, then the outage began, before A woke.
    # The lapse was judged by that last answer, so it counted as one in the outage: A
    # ended the run from its copy, its waiter was told SUCCESS, and the replay refused
    # that end (B's lease). Judged by when A detected the outage (after the stall), the
    # run is held, as one whose lease lapsed long before.
    gw, proxy = long_leased
    executor = gw.executor
    router = gw.manager.router
    stream = executor._stream

    async def stream_then_stall(record: RunRecord, *args: Any) -> Any:
        ended = await stream(record, *args)
        async with executor.claims._claiming:  # no renewal of A's but this one
            lapses = datetime.now(UTC) + timedelta(seconds=0.5)
            await _lapsing_at(executor, record.run_id, lapses)
            answered = router.primary.answered_at
            assert answered is not None and answered < lapses
            # The stall: blocking the loop is the point (no probe, no renewal meanwhile).
            time.sleep(1)  # noqa: ASYNC251
            proxy.refuse()  # the outage begins before A wakes
            # B took the lapsed run over in PostgreSQL before it (A cannot tell when).
            await asyncio.to_thread(_taken_over_by_b, pg_database, record.run_id, for_an_hour=True)
        return ended

    executor._stream = stream_then_stall  # type: ignore[method-assign]
    with pytest.raises(RunHeldUpError) as held:
        await asyncio.wait_for(gw.start_run(StartRun(graph="slow", input={}, wait=True)), 30)
    run_id = held.value.run_id
    assert not [
        e for e in router.journal.entries if isinstance(e, FinishRun) and e.run_id == run_id
    ]
    await _outage_ends(gw, proxy)
    assert rows(
        pg_database,
        "SELECT status, lease_owner FROM code_hero_runs WHERE run_id = %s",
        run_id,
    ) == [(RunStatus.RUNNING.value, "replica-b")]


async def test_a_lease_that_lapses_after_the_outage_was_detected_stays_this_processes(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str
) -> None:
    # The other side of the test above: in an ordinary outage a renewal (or a probe)
    # fails before the lease lapses, and a lapse after that is one in the outage, where
    # no replica can take the run over: the run ends here, and that end is recorded.
    gw, proxy = long_leased
    executor = gw.executor
    stream = executor._stream

    async def stream_then_cut(record: RunRecord, *args: Any) -> Any:
        ended = await stream(record, *args)
        await _outage_begins(gw, proxy)
        async with executor.claims._claiming:  # renewed in the outage, then lapsed
            lapses = datetime.now(UTC) + timedelta(seconds=0.2)
            await _lapsing_at(executor, record.run_id, lapses)
            await asyncio.sleep(0.4)
        return ended

    executor._stream = stream_then_cut  # type: ignore[method-assign]
    run = await asyncio.wait_for(gw.start_run(StartRun(graph="slow", input={}, wait=True)), 30)
    assert run.status is RunStatus.SUCCESS
    await _outage_ends(gw, proxy)
    assert rows(pg_database, "SELECT status FROM code_hero_runs WHERE run_id = %s", run.run_id) == [
        (RunStatus.SUCCESS.value,)
    ]


async def test_a_lease_that_lapsed_before_a_slow_detection_is_held_only_in_a_stall(
    long_leased: tuple[Gateway, BlackHoleProxy],
) -> None:
    # A black hole: calls hang until their timeout, so this process finds the primary
    # unreachable seconds after its last answer, and a lease whose renewals hang can
    # lapse in between, the loop running: a lapse in the outage, the run this process's.
    # Judged by when the outage was detected, it was held, its waiter told UNAVAILABLE
    # (review). Held it is only when the lapse fell in a stall of this process.
    gw, proxy = long_leased
    registry = gw.executor.registry
    router = gw.manager.router
    run = await gw.start_run(StartRun(graph="slow", input={}, wait=True))
    record = await registry.get_run(run.run_id)
    assert record is not None
    answered = router.primary.answered_at
    assert answered is not None
    await _outage_begins(gw, proxy)
    lapsed = answered + timedelta(seconds=1)
    known = dataclasses.replace(record, lease_expires_at=lapsed)
    router.degraded_since = lapsed + timedelta(seconds=4)  # a probe's timeout later
    assert not registry._lapsed_before_outage(known)
    router.stalls.stalls.append((lapsed - timedelta(seconds=2), lapsed + timedelta(seconds=1)))
    assert registry._lapsed_before_outage(known)
    # Not a stall that began once the outage was found (it is the outage's to judge).
    router.stalls.stalls.clear()
    router.stalls.stalls.append((lapsed + timedelta(seconds=5), lapsed + timedelta(seconds=6)))
    assert not registry._lapsed_before_outage(
        dataclasses.replace(known, lease_expires_at=lapsed + timedelta(seconds=5.5))
    )
    await _outage_ends(gw, proxy)


@pytest.mark.parametrize("renewed", [False, True], ids=["then-renewed", "as-it-was-renewed"])
async def test_events_stored_in_an_outage_of_a_run_taken_over_before_it_are_not_copied(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str, renewed: bool
) -> None:
    # A's lease lapsed (A stalled) and replica B took the run over in PostgreSQL before
    # the outage; A, unaware, stored events of the run in the fallback until its lease
    # renewal found the run lost. Once PostgreSQL was back they were copied into B's
    # run, numbered where B numbers on (B's writer fenced, or its end's events skipped
    # as stored already), or after B's end. Now the copy applies only under A's lease;
    # with `renewed`, the events are stored (a flush under way) after the renewal found
    # the run lost, with no lease of A's to copy them under: they are not copied.
    gw, proxy = long_leased
    executor = gw.executor
    registry = executor.registry
    stream = executor._stream
    tasks: list[asyncio.Task[Any]] = []
    stalled = asyncio.Event()
    taken_at: list[int] = []  # the last seq in PostgreSQL when B took the run over

    async def taken_over_then_outage(record: RunRecord, writer: Any, *args: Any) -> Any:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        stalled.set()
        await writer.flush()
        lapsed = datetime.now(UTC) - timedelta(hours=1)
        async with executor.claims._claiming:  # (as in the test above)
            await _lapsing_at(executor, record.run_id, lapsed)
            await asyncio.to_thread(_taken_over_by_b, pg_database, record.run_id, for_an_hour=True)
        taken_at.append(await registry.last_seq(record.run_id))
        await _outage_begins(gw, proxy)
        writer.emit(EventType.CUSTOM, {"by": "a"})
        if not renewed:
            await writer.flush()  # to the fallback, journalled to be copied back
        # Its renewal in the outage finds it lost (its lease lapsed before the outage).
        until_then = datetime.now(UTC) + timedelta(minutes=10)
        assert await registry.renew_leases(executor.owner, [record.run_id], until_then) == []
        if renewed:
            await writer.flush()
        executor.stop(record.run_id, lost=True)  # as Claims does then
        return await stream(record, writer, *args)

    executor._stream = taken_over_then_outage  # type: ignore[method-assign]
    run = await gw.start_run(StartRun(graph="slow", input={}))
    await stalled.wait()
    await asyncio.wait(tasks)  # A is done with the run
    copies = [
        e
        for e in gw.manager.router.journal.entries
        if isinstance(e, CopyEvents) and e.run_id == run.run_id
    ]
    assert [e.owner for e in copies] == ([] if renewed else [executor.owner])
    await _outage_ends(gw, proxy)
    assert rows(
        pg_database,
        "SELECT status, lease_owner FROM code_hero_runs WHERE run_id = %s",
        run.run_id,
    ) == [(RunStatus.RUNNING.value, "replica-b")]
    assert (
        rows(
            pg_database,
            "SELECT seq, type FROM code_hero_run_events WHERE run_id = %s AND seq > %s",
            run.run_id,
            taken_at[0],
        )
        == []
    ), "B numbers on from what PostgreSQL had when it took the run over"
    for sizes in (executor.internal_sizes(), registry.internal_sizes()):  # none kept
        assert sizes == dict.fromkeys(sizes, 0)


@pytest.mark.parametrize("status", [RunStatus.SUCCESS, RunStatus.CANCELLED])
async def test_an_end_in_an_outage_under_a_lease_not_held_is_refused(
    long_leased: tuple[Gateway, BlackHoleProxy], status: RunStatus
) -> None:
    # The end of a run in flight at the outage's start, recorded under a lease
    # (`if_leased_by`) this process does not know the run to be held under: refused,
    # nothing journalled. It was ended from the copy held here (and the end journalled).
    gw, proxy = long_leased
    executor = gw.executor
    registry = executor.registry
    stream = executor._stream
    refused: list[Any] = []
    journalled: list[Any] = []

    async def stream_then_cut(record: RunRecord, *args: Any) -> Any:
        ended = await stream(record, *args)
        proxy.refuse()
        refused.append(
            await registry.finish_run(
                record.run_id,
                ThreadStatus.IDLE,
                if_leased_by="replica-b",
                status=status,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        journalled.extend(
            e for e in gw.manager.router.journal.entries if isinstance(e, FinishRun | ChangeRun)
        )
        await _outage_ends(gw, proxy)
        return ended

    executor._stream = stream_then_cut  # type: ignore[method-assign]
    final = await asyncio.wait_for(gw.start_run(StartRun(graph="slow", input={}, wait=True)), 30)
    assert refused == [(None, False)]
    # A cancel asked here goes on to whoever holds the run (the end itself is not ours).
    flagged = [(e.run_id, e.fields) for e in journalled if isinstance(e, ChangeRun)]
    assert not [e for e in journalled if isinstance(e, FinishRun)]
    assert flagged == (
        [(final.run_id, {"cancel_requested": True})] if status is RunStatus.CANCELLED else []
    )
    assert final.status is RunStatus.SUCCESS


async def test_a_kept_thread_used_from_postgres_is_postgres_in_the_next_outage(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kept thread stayed local into a second outage although PostgreSQL had taken its
    # writes meanwhile: the events of a run started on it between the outages were
    # journalled as a copy of the thread, which copies the fallback's runs only (the
    # run's last events, its end among them, never reached PostgreSQL), and that copy
    # put the fallback's stale row over PostgreSQL's newer one (metadata set between).
    gw, proxy = long_leased
    thread_id = await _a_thread_kept_across_a_recovery(gw, proxy)
    await gw.update_thread(thread_id, metadata={"set": "between the outages"}, caller=ANONYMOUS)
    run = await _a_run_cut_by_a_second_outage(gw, proxy, thread_id, monkeypatch)
    events = rows(
        pg_database,
        "SELECT seq, type, payload->>'status' FROM code_hero_run_events WHERE run_id = %s "
        "ORDER BY seq",
        run.run_id,
    )
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    assert events[-1][1:] == ("status", RunStatus.SUCCESS.value), events
    kept = rows(
        pg_database,
        "SELECT metadata->>'set' FROM code_hero_threads WHERE thread_id = %s",
        thread_id,
    )
    assert kept == [("between the outages",)]


@pytest.mark.parametrize("outages", [1, 2])
async def test_a_kept_thread_deleted_leaves_nothing_in_the_fallback(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, outages: int
) -> None:
    # A thread kept across a recovery keeps its fallback rows until its quarantined
    # entries settle (the retry then forgets its copies). Deleted first, its entries went
    # with it, so nothing forgot its copies: its checkpoints went from the fallback, but
    # its thread, run and event rows stayed there for good, and the router held it
    # local still (a thread made anew under the id had its touches skipped). After a
    # second outage it is local no longer, its rows kept all the same.
    gw, proxy = proxied
    thread_id = await _a_thread_kept_across_a_recovery(gw, proxy)
    if outages == 2:
        await _outage_begins(gw, proxy)
        await _outage_ends(gw, proxy)
    router = gw.manager.router
    fallback = router.slots[1].backend
    assert isinstance(fallback, MemoryBackend)

    async def fallback_rows() -> list[object]:
        found = []
        for table in ("code_hero_threads", "code_hero_runs", "code_hero_run_events"):
            sql = f"SELECT count(*) FROM {table} WHERE thread_id = ?"
            async with fallback._conn.execute(sql, (thread_id,)) as cur:
                found.append((await cur.fetchall())[0][0])
        return found

    assert all(await fallback_rows())  # kept: its rows stay while its entry is quarantined

    assert (await gw.delete_thread(thread_id)).deleted

    assert await fallback_rows() == [0, 0, 0]
    assert await fallback.count_checkpoints(thread_id) == 0
    assert not router.is_local(thread_id) and not router.quarantined
    _assert_none_left(pg_database, thread_id, EVERY_TABLE)


@pytest.mark.parametrize("failed", ["before the outage", "in it"])
async def test_the_events_of_an_end_that_failed_are_copied_under_its_lease(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str, failed: str
) -> None:
    # An end that failed (a deadlock, say) dropped the run's claim here, and the events
    # its writer stored after it (so the run's next claimer numbers past them) went to
    # the fallback in an outage with no lease to copy them under: copied into the run
    # whoever held it by then, or, the run changed in the outage (adopted), not copied
    # at all, their seqs reused by its next claimer. They go under the lease it held.
    gw, proxy = long_leased
    executor, registry = gw.executor, gw.executor.registry
    gw.events.flush_interval = 3600  # no batch unless flushed: the rest is the end's
    router = gw.manager.router
    stream = executor._stream
    tasks: list[asyncio.Task[Any]] = []
    started = asyncio.Event()
    failing = (router.primary if failed == "before the outage" else router.slots[1]).backend
    assert failing is not None
    finish_run = failing.registry.finish_run

    async def fail(*args: Any, **kw: Any) -> Any:
        if failed == "before the outage":
            proxy.refuse()  # the events it gives back are stored in the outage
        raise RuntimeError("deadlock detected")

    async def stream_then_cut(record: RunRecord, *args: Any) -> Any:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        started.set()
        ended = await stream(record, *args)
        if failed == "in it":
            await _outage_begins(gw, proxy)
            until_then = datetime.now(UTC) + timedelta(minutes=10)  # adopted: renewed here
            assert await registry.renew_leases(executor.owner, [record.run_id], until_then)
        failing.registry.finish_run = fail  # type: ignore[method-assign]
        return ended

    executor._stream = stream_then_cut  # type: ignore[method-assign]
    run = await gw.start_run(StartRun(graph="slow", input={}))
    await started.wait()
    with pytest.raises(RuntimeError, match="deadlock"):
        await tasks[0]
    failing.registry.finish_run = finish_run  # type: ignore[method-assign]
    copies = [
        e for e in router.journal.entries if isinstance(e, CopyEvents) and e.run_id == run.run_id
    ]
    assert [e.owner for e in copies] == [executor.owner]
    # Meanwhile, replica B takes the run over in PostgreSQL: the events are not its.
    _taken_over_by_b(pg_database, run.run_id)
    await _outage_ends(gw, proxy)
    stored = rows(pg_database, "SELECT seq FROM code_hero_run_events WHERE run_id = %s", run.run_id)
    assert stored == [(1,)], "B numbers on from what PostgreSQL had when it took the run"
    assert registry.internal_sizes()["registry.unended"] == 0


async def test_a_failed_end_whose_events_were_never_stored_is_forgotten_at_recovery(
    long_leased: tuple[Gateway, BlackHoleProxy],
) -> None:
    # An end that failed keeps the lease the run held here until its writer stores the
    # events it gives back (copied under that lease). When they are never stored (the
    # fallback failed them too: a double failure) the lease stayed kept for good, in
    # every outage after. At recovery it goes: journalled entries name their owner.
    gw, proxy = long_leased
    executor, registry = gw.executor, gw.executor.registry
    gw.events.flush_interval = 3600  # no batch unless flushed: the rest is the end's
    gw.events.retry_interval = 0
    stream = executor._stream
    tasks: list[asyncio.Task[Any]] = []
    started = asyncio.Event()
    fallback = gw.manager.router.slots[1].backend
    assert fallback is not None

    async def fail(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("deadlock detected")

    async def stream_then_cut(record: RunRecord, *args: Any) -> Any:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        started.set()
        ended = await stream(record, *args)
        await _outage_begins(gw, proxy)
        until_then = datetime.now(UTC) + timedelta(minutes=10)  # adopted: renewed here
        assert await registry.renew_leases(executor.owner, [record.run_id], until_then)
        fallback.registry.finish_run = fail  # type: ignore[method-assign]
        fallback.registry.store_events = fail  # type: ignore[method-assign]
        return ended

    executor._stream = stream_then_cut  # type: ignore[method-assign]
    await gw.start_run(StartRun(graph="slow", input={}))
    await started.wait()
    with pytest.raises(RuntimeError, match="deadlock"):
        await tasks[0]
    assert registry.internal_sizes()["registry.unended"] == 1  # its events never stored
    await _outage_ends(gw, proxy)
    assert registry.internal_sizes()["registry.unended"] == 0


async def test_a_flush_in_flight_when_postgres_goes_silent_ends_and_so_does_its_run(
    long_leased: tuple[Gateway, BlackHoleProxy], pg_database: str
) -> None:
    # A black hole (a partition, a frozen host: connections stay open, nothing answers).
    # A flush of the run's events was in flight on a pooled connection when it began;
    # the probe found the outage and the router failed over, but that statement had no
    # bound and waited forever, and the run's end (which waits for the flush) with it:
    # startRun(wait: true) never answered. A probe that finds the database unreachable
    # now breaks the connections the pool has lent out, so the flush fails as
    # unreachable and takes the outage path.
    gw, proxy = long_leased
    executor = gw.executor
    gw.events.flush_interval = 3600  # no batch unless flushed here
    stream, flushes = executor._stream, []

    async def silenced_after_its_steps(record: RunRecord, writer: Any, *args: Any) -> Any:
        result = await stream(record, writer, *args)
        proxy.black_hole()
        flushes.append(asyncio.create_task(gw.events.flush()))
        await until(lambda: _degraded(gw))
        return result

    executor._stream = silenced_after_its_steps  # type: ignore[method-assign]
    try:
        final = await asyncio.wait_for(
            gw.start_run(StartRun(graph="slow", input={}, wait=True)), 30
        )
        await asyncio.wait_for(asyncio.gather(*flushes), 30)
    finally:
        proxy.forward()
    # Its end was journalled on the fallback, and reaches PostgreSQL once it is back.
    assert final.status is RunStatus.SUCCESS, final
    await until(lambda: _synced(gw))
    assert rows(
        pg_database, "SELECT status FROM code_hero_runs WHERE run_id = %s", final.run_id
    ) == [(RunStatus.SUCCESS.value,)]


async def test_a_read_in_flight_when_postgres_goes_silent_answers_unavailable(
    proxied: tuple[Gateway, BlackHoleProxy],
) -> None:
    gw, proxy = proxied
    run = await gw.start_run(StartRun(graph="slow", input={}, wait=True))
    proxy.black_hole()
    try:
        read = asyncio.create_task(gw.get_run(run.run_id))
        with pytest.raises(BackendUnavailableError, match="unreachable") as caught:
            await asyncio.wait_for(read, 30)
        assert caught.value.code == "UNAVAILABLE" and caught.value.retry_after >= 1
    finally:
        proxy.forward()


async def test_one_calls_failure_leaves_the_calls_beside_it_running(
    proxied: tuple[Gateway, BlackHoleProxy],
) -> None:
    # One call's error judged "down" (its connection ended by the server: 57P01, a reset
    # by a NAT) fails the primary over, but says nothing of the calls in flight beside
    # it, on connections of their own: they run to their end. Shutting every lent
    # socket at any failover cut them all, a self-made outage (review); only a probe
    # that finds the database unreachable ends them.
    gw, _ = proxied
    router = gw.manager.router
    backend = router.primary.backend
    assert isinstance(backend, PostgresBackend)

    async def in_flight() -> Any:
        async with backend.pool.connection() as conn:
            cur = await conn.execute("SELECT pg_sleep(0.5), 1 AS one")
            return await cur.fetchone()

    task = asyncio.create_task(in_flight())
    await asyncio.sleep(0.1)
    ended = psycopg.OperationalError("terminating connection due to administrator command")
    router.fail(router.primary, ended)
    assert (await asyncio.wait_for(task, 30))["one"] == 1
    await until(lambda: _synced(gw))  # the probe answers: served again


async def test_a_retried_copy_keeps_the_outages_run_on_a_row_a_run_made_since(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread born in the outage; the drain's copy of its row is refused once (a lock
    timeout) and quarantined; after the switch a client starts a run on it, whose
    admission makes PostgreSQL's row (created_at now). The retry's late copy took that
    for a thread made anew, copied nothing and settled: the fallback's copies were
    forgotten and the outage's run was gone."""
    gw, proxy = proxied
    router = gw.manager.router
    thread_id = await _born_in_an_outage(gw, proxy)
    page = await gw.manager.registry.list_runs(RunFilter(thread_id=thread_id), first=10)
    (old,) = [r.run_id for r in page.items]
    assert router.primary.backend is not None
    registry = router.primary.backend.registry
    copy_thread, refused = registry.copy_thread, []

    async def refused_once(thread: ThreadRecord, *args: Any) -> bool:
        if not refused:
            refused.append(thread.thread_id)
            raise psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
        return await copy_thread(thread, *args)

    monkeypatch.setattr(registry, "copy_thread", refused_once)  # the drain's copy
    _no_retry(monkeypatch)
    proxy.forward()
    await until(lambda: _synced(gw))
    assert refused == [thread_id] and router.quarantined and router.is_local(thread_id)
    assert rows(pg_database, "SELECT count(*) FROM code_hero_runs WHERE run_id = %s", old) == [(0,)]
    again = await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}, wait=True))
    assert again.status is RunStatus.SUCCESS
    monkeypatch.undo()
    await recovery.retry_quarantined(router)
    assert not router.quarantined
    assert rows(pg_database, "SELECT count(*) FROM code_hero_runs WHERE run_id = %s", old) == [(1,)]


async def test_a_late_copy_of_a_marked_thread_gives_no_run_to_a_thread_made_anew(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion here marked a thread born in the outage; its marked copy is refused at
    the drain and at the switch. Another replica deletes the thread on PostgreSQL and a
    client makes it anew. The retried copy took no mark there, but added the deleted
    thread's run to the new one, and the deletion's last step rightly left that row."""
    gw, proxy = proxied
    router = gw.manager.router
    thread_id, switch, deletion, go_on = await _marked_between_the_drains(
        gw, proxy, pg_database, monkeypatch
    )
    runs_of = "SELECT run_id FROM code_hero_runs WHERE thread_id = %s"
    ((old,),) = rows(pg_database, runs_of, thread_id)
    _marks_refused(gw, monkeypatch, times=2)  # the drain's copy, the switch's
    _no_retry(monkeypatch)
    switch.set()
    await until(lambda: _synced(gw))
    assert router.primary.backend is not None
    primary = router.primary.backend
    other = await primary.registry.start_deletion(thread_id)  # another replica's
    assert other is not None
    await primary.delete_checkpoints(thread_id)
    assert (await primary.registry.delete_thread(thread_id, marked=other.token))[0]
    assert rows(pg_database, "SELECT count(*) FROM code_hero_runs WHERE run_id = %s", old) == [(0,)]
    now = datetime.now(UTC)
    made_anew = ThreadRecord(thread_id, "u2", ThreadStatus.IDLE, {"new": True}, now, now)
    await primary.registry.put_thread(made_anew)
    await recovery.retry_quarantined(router)  # the late copy of the marked (deleted) thread
    go_on.set()
    gone = await deletion
    assert gone.deleted and gone.runs_deleted == 0  # it marked the old thread; not this one
    assert await gw.get_thread(thread_id) == made_anew
    # the old thread was deleted (by both deletions): none of its runs is the new thread's
    assert rows(pg_database, "SELECT count(*) FROM code_hero_runs WHERE run_id = %s", old) == [(0,)]


async def test_a_thread_made_anew_elsewhere_is_not_refused_runs_for_a_mark_it_never_had(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark refused at the drain and at the switch (`uncarried_marks`); another
    replica deletes the thread on PostgreSQL and a client makes it anew. This replica
    refused runs on the new thread (CONFLICT) for the old thread's mark."""
    gw, proxy = proxied
    router = gw.manager.router
    thread_id, switch, deletion, go_on = await _marked_between_the_drains(
        gw, proxy, pg_database, monkeypatch
    )
    _marks_refused(gw, monkeypatch, times=2)
    _no_retry(monkeypatch)
    switch.set()
    await until(lambda: _synced(gw))
    assert router.primary.backend is not None
    primary = router.primary.backend
    other = await primary.registry.start_deletion(thread_id)  # another replica's
    assert other is not None
    await primary.delete_checkpoints(thread_id)
    assert (await primary.registry.delete_thread(thread_id, marked=other.token))[0]
    now = datetime.now(UTC)
    await primary.registry.put_thread(
        ThreadRecord(thread_id, None, ThreadStatus.IDLE, {"new": True}, now, now)
    )
    monkeypatch.delattr(gw.manager.registry, "start_deletion")
    try:
        run = await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}, wait=True))
        assert run.status is RunStatus.SUCCESS
    finally:
        go_on.set()
        await deletion


async def test_a_fallback_error_reading_a_waiting_mark_refuses_the_run_and_fails_nothing_over(
    proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mark_still_waits` reads the fallback's row inside admit_run's call on the primary:
    an error of the fallback's there was judged the primary's, which failed over (review).
    The run is refused, as the mark refuses it, and the primary keeps serving."""
    gw, proxy = proxied
    router = gw.manager.router
    thread_id, switch, deletion, go_on = await _marked_between_the_drains(
        gw, proxy, pg_database, monkeypatch
    )
    _marks_refused(gw, monkeypatch, times=2)
    _no_retry(monkeypatch)
    switch.set()
    await until(lambda: _synced(gw))
    assert router.active == 0 and router.mark_waits(thread_id)
    fallback = router.slots[1].backend
    assert fallback is not None

    async def broken(*args: object, **kwargs: object) -> None:
        raise OSError("the fallback's disk")

    monkeypatch.setattr(fallback.registry, "get_thread", broken)
    try:
        with pytest.raises(ThreadBeingDeletedError):
            await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}, wait=True))
        assert router.active == 0, "the primary was failed over for the fallback's error"
        assert router.primary.healthy
    finally:
        monkeypatch.undo()
        go_on.set()
        await deletion


async def test_whether_a_run_waits_for_a_slot_is_answered_from_the_fallback(
    proxied: tuple[Gateway, BlackHoleProxy],
) -> None:
    """A claim pass with every slot busy asks whether a run waits (`has_claimable`):
    in an outage the fallback answers, about the runs queued in it."""
    gw, proxy = proxied
    await _outage_begins(gw, proxy)
    registry, claims = gw.manager.registry, gw.executor.claims
    now = datetime.now(UTC)
    assert not await registry.has_claimable(now=now, until=now + timedelta(seconds=30))
    claims.max_concurrent = 0  # no slot: the run waits, queued in the fallback
    queued = await gw.start_run(StartRun(graph="slow", input={"steps": []}))
    assert queued.lease_owner is None
    now = datetime.now(UTC)
    assert await registry.has_claimable(now=now, until=now + timedelta(seconds=30))
    claims.max_concurrent = 4
    claims.wake()
    ended = await gw.executor.wait(queued.run_id, limit=60)
    assert ended.status is RunStatus.SUCCESS
    await _outage_ends(gw, proxy)


async def test_a_deletion_of_a_thread_whose_run_the_outage_holds_is_about_the_thread(
    long_leased: tuple[Gateway, BlackHoleProxy],
) -> None:
    # A guard (the review of the cancel's change asked): a cancel of a run the outage
    # holds answers at once naming the run; a deletion of its thread answers UNAVAILABLE
    # at once too, about the thread (its rows are the primary's), never waiting out the
    # run's lease nor naming a run the client did not ask about.
    gw, proxy = long_leased
    there = (await gw.create_thread(caller=ANONYMOUS)).thread_id
    _cut_as_it_launches(gw, proxy)
    with pytest.raises(RunHeldUpError):
        await asyncio.wait_for(
            gw.start_run(StartRun(graph="slow", input={}, thread_id=there, wait=True)), 30
        )
    began = time.monotonic()
    with pytest.raises(BackendUnavailableError) as caught:
        await asyncio.wait_for(gw.delete_thread(there), 30)
    assert time.monotonic() - began < 3
    assert not isinstance(caught.value, RunHeldUpError), caught.value
    assert caught.value.code == "UNAVAILABLE" and caught.value.retry_after >= 1
    await _outage_ends(gw, proxy)
