"""A run's admission on a thread id made up just now (`new_thread`), one trip on every
kind of database (issue 15): a refused one leaves nothing behind, on each kind alike;
on SQLite a cancelled one leaves no transaction open on the shared connection."""

from __future__ import annotations

import asyncio

import pytest

from code_hero.errors import ConflictError
from code_hero.persistence.records import Registry, RunStatus, ThreadStatus
from code_hero.persistence.registry import SqliteRegistry
from code_hero.persistence.webhooks import RUN_WEBHOOK_KEY, DeliveryFilter
from tests.persistence.registry.support import events, put, run


async def test_a_taken_run_id_on_a_new_thread_leaves_no_thread(registry: Registry) -> None:
    admitted, _ = await registry.admit_run(
        run("r1", "t1"), reject_if_busy=False, events=events("r1", "t1", 1), new_thread=True
    )
    assert admitted is not None
    with pytest.raises(ConflictError, match="a run with id 'r1' already exists"):
        await registry.admit_run(
            run("r1", "t2"), reject_if_busy=False, events=events("r1", "t2", 1), new_thread=True
        )
    assert await registry.get_thread("t2") is None  # the middle statement's failure undid it
    kept = await registry.get_run("r1")
    assert kept is not None and kept.thread_id == "t1"
    assert [e.seq for e in await registry.list_events("r1")] == [1]


async def test_a_taken_thread_id_is_refused_alike_on_every_kind(registry: Registry) -> None:
    """A plain INSERT of the thread's row (was an upsert on SQLite before runs16): an id
    taken already fails, and the run is not written."""
    await put(registry, "t1", user_id="u")
    with pytest.raises(ConflictError):
        await registry.admit_run(
            run("r1", "t1", user_id="u"),
            reject_if_busy=False,
            events=events("r1", "t1", 1),
            new_thread=True,
        )
    assert await registry.get_run("r1") is None
    thread = await registry.get_thread("t1")
    assert thread is not None and thread.status is ThreadStatus.IDLE


async def test_a_cancelled_admission_leaves_no_transaction_open(
    sqlite_registry: SqliteRegistry,
) -> None:
    task = asyncio.ensure_future(
        sqlite_registry.admit_run(
            run("r1", "t1"), reject_if_busy=False, events=events("r1", "t1", 1), new_thread=True
        )
    )
    for _ in range(3):  # into the trip (or not: either way nothing is left open)
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sqlite_registry.conn.in_transaction
    # Whether the trip had been sent (then committed) or not, all of it or none of it.
    stored = await sqlite_registry.get_run("r1")
    thread = await sqlite_registry.get_thread("t1")
    assert (stored is None) == (thread is None)
    assert len(await sqlite_registry.list_events("r1")) == (0 if stored is None else 1)
    admitted, _ = await sqlite_registry.admit_run(
        run("r2", "t2"), reject_if_busy=False, events=events("r2", "t2", 1), new_thread=True
    )
    assert admitted is not None


async def test_a_run_with_its_own_url_queues_both_and_wakes_once(registry: Registry) -> None:
    """Two delivery inserts (no webhook row: the run's own URL only, then a replay)
    take the trip-by-trip branch on every kind; counted by the rows they return."""
    woken: list[None] = []
    registry.on_enqueue(lambda: woken.append(None))  # type: ignore[attr-defined]
    config = {RUN_WEBHOOK_KEY: "https://hooks.example.com/own"}
    await registry.admit_run(
        run("r1", "t1", user_id="u", config=config),
        reject_if_busy=False,
        events=events("r1", "t1", 1),
        new_thread=True,
    )
    finished, waiting = await registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    assert finished is not None and not waiting and len(woken) == 1
    page = await registry.list_deliveries(DeliveryFilter(run_id="r1"), first=10)
    assert [d.url for d in page.items] == ["https://hooks.example.com/own"]
    await registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    assert len(woken) == 1
