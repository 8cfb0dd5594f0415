"""The event stream: gap-free, replayable from any seq during and after a run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from code_hero.gateway import Gateway
from code_hero.persistence.fallback import PoolBusyError
from code_hero.persistence.records import EventRecord
from code_hero.runs.bus import InProcessBus
from code_hero.runs.events import EventType, terminal_status, translate
from code_hero.runs.executor import StartRun
from tests.runs.conftest import the_next_end_fails


async def collect(gw: Gateway, run_id: str, after: int, pause: float = 0.0) -> list[EventRecord]:
    out = []
    async for event in await gw.follow_run(run_id, after_seq=after):
        out.append(event)
        if pause:
            await asyncio.sleep(pause)
    return out


async def test_subscribing_at_many_points_during_a_run(gateway: Gateway) -> None:
    run = await gateway.start_run(StartRun(message="Help me build a FastAPI application"))
    subscribers = []
    for after in range(0, 60, 3):  # each subscribes while events are being produced
        subscribers.append(asyncio.create_task(collect(gateway, run.run_id, after)))
        await asyncio.sleep(0.002)
    results = await asyncio.wait_for(asyncio.gather(*subscribers), 30)
    stored = await gateway.run_events(run.run_id, first=1000)
    final = stored[-1].seq
    assert terminal_status(stored[-1]) is not None
    for after, got in zip(range(0, 60, 3), results, strict=True):
        assert [e.seq for e in got] == list(range(after + 1, final + 1)), f"after {after}"
        assert [e.payload for e in got] == [e.payload for e in stored[after:]]


async def test_replay_after_the_run_ended(gateway: Gateway) -> None:
    run = await gateway.start_run(StartRun(graph="slow", input={}, wait=True))
    stored = await gateway.run_events(run.run_id, first=1000)
    for after in (0, 1, len(stored) // 2, len(stored) - 1):
        got = await asyncio.wait_for(collect(gateway, run.run_id, after), 5)
        assert [e.seq for e in got] == [e.seq for e in stored[after:]]
    assert await asyncio.wait_for(collect(gateway, run.run_id, len(stored)), 5) == []


async def test_a_slow_subscriber_catches_up_and_slows_nothing(gateway: Gateway) -> None:
    # Tiny queues: overflow for sure.
    gateway.services.bus = gateway.events.bus = InProcessBus(queue_size=4)
    run = await gateway.start_run(StartRun(message="Help me build a FastAPI application"))
    slow = asyncio.create_task(collect(gateway, run.run_id, 0, pause=0.01))
    fast = asyncio.create_task(collect(gateway, run.run_id, 0))
    done = await gateway.executor.wait(run.run_id, limit=30)
    assert not slow.done(), "the run finished without waiting for the slow reader"
    slow_events, fast_events = await asyncio.wait_for(asyncio.gather(slow, fast), 30)
    stored = await gateway.run_events(run.run_id, first=1000)
    assert done.status.value == "SUCCESS"
    assert [e.seq for e in slow_events] == [e.seq for e in stored] == [e.seq for e in fast_events]


async def test_events_are_stored_in_batches(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = gateway.manager.registry
    calls: list[int] = []
    updates: list[str] = []
    real, real_update, real_finish = (
        registry.store_batch,
        registry.update_run,
        registry.finish_run,
    )

    async def counting(events: list, runs: dict, **lease: Any) -> set[str]:  # type: ignore[type-arg]
        calls.append(len(events))
        return await real(events, runs, **lease)

    async def finishing(run_id: str, *args: Any, events: Any = (), **fields: Any) -> Any:
        calls.append(len(events))  # the last batch goes with the end
        return await real_finish(run_id, *args, events=events, **fields)

    async def update_run(run_id: str, **fields: Any) -> Any:
        updates.extend(fields)
        return await real_update(run_id, **fields)

    monkeypatch.setattr(registry, "store_batch", counting)
    monkeypatch.setattr(registry, "update_run", update_run)
    monkeypatch.setattr(registry, "finish_run", finishing)
    run = await gateway.start_run(
        StartRun(message="Help me build a FastAPI application", wait=True)
    )
    events = await gateway.run_events(run.run_id, first=1000)
    assert sum(calls) == len(events) - 1 > 50  # the PENDING event is stored with the run
    assert len(calls) < len(events) / 5, "one transaction per batch, not per token"
    # The run's timeline goes with its events (or its end), not in updates of its own.
    assert "steps" not in updates


async def test_a_tick_stores_one_batch_and_leaves_what_came_meanwhile_for_the_next(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush a tick starts stores one batch: an event emitted while it is in flight
    waits for the next tick (or its run's end), not for a batch of its own at once
    (issue 15: 16 concurrent runs stored batches back to back, every run's end waiting
    for the one in flight)."""
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
    events, registry = gateway.events, gateway.manager.registry
    real = registry.store_batch
    gate, entered = asyncio.Event(), asyncio.Event()
    batches: list[list[int]] = []

    async def held(batch: list[EventRecord], fields: Any, **lease: Any) -> set[str]:
        batches.append([e.seq for e in batch])
        entered.set()
        await gate.wait()
        return await real(batch, fields, **lease)

    monkeypatch.setattr(registry, "store_batch", held)
    writer = await events.writer(run.run_id, run.thread_id)
    first = writer.emit(EventType.CUSTOM, {"n": 1})
    async with asyncio.timeout(30):
        await entered.wait()  # the tick's flush is in flight, held
        second = writer.emit(EventType.CUSTOM, {"n": 2})
        # The tick the second event set: as if it came and found the flush in flight.
        assert events._timer is not None
        events._timer.cancel()
        events._timer = None
        events.flush_interval = 3600  # no tick after it in this test
        gate.set()
        assert events._task is not None
        await events._task
    assert batches == [[first.seq]]
    assert writer.pending == [second]
    await writer.close()  # stores the rest
    assert batches == [[first.seq], [second.seq]]
    stored = await gateway.run_events(run.run_id, first=1000)
    assert [e.payload for e in stored[-2:]] == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize("types", [["message_delta"], ["status", "agent_transition"]])
async def test_filtered_followers_see_their_types_once(gateway: Gateway, types: list[str]) -> None:
    """Filtered followers from many points, some overflowing tiny queues: each gets the
    stored events of its types after its seq, once, in order, and ends with the run."""
    gateway.services.bus = gateway.events.bus = InProcessBus(queue_size=4)

    async def follow(run_id: str, after: int, pause: float) -> list[EventRecord]:
        out = []
        async for event in await gateway.follow_run(run_id, after_seq=after, types=types):
            out.append(event)
            await asyncio.sleep(pause)
        return out

    run = await gateway.start_run(StartRun(message="Help me build a FastAPI application"))
    followers = []
    for after in range(0, 40, 4):
        pause = 0.01 if after % 8 else 0.0  # half of them too slow for their queue
        followers.append((after, asyncio.create_task(follow(run.run_id, after, pause))))
        await asyncio.sleep(0.002)
    got = await asyncio.wait_for(asyncio.gather(*(task for _, task in followers)), 30)
    stored = await gateway.run_events(run.run_id, first=1000)
    assert terminal_status(stored[-1]) is not None
    for (after, _), events in zip(followers, got, strict=True):
        wanted = [e.seq for e in stored if e.seq > after and e.type in types]
        assert wanted and [e.seq for e in events] == wanted, f"after {after}"


async def test_a_failure_after_a_split_batch_does_not_store_events_twice(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that collides is stored writer by writer; when a later writer then fails,
    the writers already stored are not queued again (the next flush would collide with
    their own events and fence their runs: found in review)."""
    from code_hero.errors import ConflictError
    from code_hero.runs.events import EventType

    a = await gateway.start_run(StartRun(graph="slow", input={}, wait=True))
    b = await gateway.start_run(StartRun(graph="slow", input={}, wait=True))
    log = gateway.events
    registry = gateway.manager.registry
    real = registry.store_batch
    calls: list[set[str]] = []

    async def faulty(events: list, runs: dict, **lease: Any) -> set[str]:  # type: ignore[type-arg]
        calls.append({e.run_id for e in events})
        if len(calls) == 1:
            raise ConflictError("injected: the whole batch collides")
        if b.run_id in calls[-1]:
            raise RuntimeError("injected: b fails")
        return await real(events, runs, **lease)

    wa = await log.writer(a.run_id, a.thread_id)
    wb = await log.writer(b.run_id, b.thread_id)
    sent = wa.emit(EventType.CUSTOM, {"n": 1})
    wb.emit(EventType.CUSTOM, {"n": 2})
    monkeypatch.setattr(registry, "store_batch", faulty)
    with pytest.raises(RuntimeError, match="b fails"):
        await log.flush()
    monkeypatch.setattr(registry, "store_batch", real)
    await log.flush()
    assert not wa.closed and not wb.closed
    assert wa.unstored() == [] and wb.unstored() == []
    stored_a = await gateway.run_events(a.run_id, first=1000)
    assert [e.payload for e in stored_a if e.seq == sent.seq] == [{"n": 1}]
    stored_b = await gateway.run_events(b.run_id, first=1000)
    assert stored_b[-1].payload == {"n": 2}


async def test_an_end_that_fails_stores_its_events_for_the_run_resumed(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An end that failed (a busy pool, a deadlock, SQLite locked) took with it the
    # events its transaction was to store: published here, never stored. The run's
    # next claimer numbered on from the last one stored and reused their seqs for its
    # own events, which a follower here, past those seqs, skipped (the end among them).
    executor, registry = gateway.executor, gateway.manager.registry
    busy = PoolBusyError("every connection of the pool is in use")
    failed = the_next_end_fails(gateway, monkeypatch, busy)
    run = await gateway.start_run(StartRun(graph="slow", input={}))
    follower = asyncio.create_task(collect(gateway, run.run_id, 0))
    assert isinstance((await failed()).exception(), PoolBusyError)
    before = await registry.list_events(run.run_id)
    assert [e.seq for e in before] == list(range(1, len(before) + 1))
    assert len(before) > 2 and not any(terminal_status(e) for e in before)
    # Unfinished, leased by no one now (as once its lease lapses): claimed and resumed.
    await registry.release_runs(executor.owner, [run.run_id])
    executor.claims.wake()
    final = await executor.wait(run.run_id, limit=30)
    assert final.status.value == "SUCCESS"
    stored = await registry.list_events(run.run_id)
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert stored[: len(before)] == before, "no seq is reused"
    assert [e for e in stored if terminal_status(e)] == stored[-1:]
    assert await asyncio.wait_for(follower, 30) == stored


@pytest.mark.parametrize("where", ["in-its-close", "in-a-flush-under-way"])
async def test_events_a_close_gave_up_on_are_not_stored_later(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # A close that failed every try left its writer queued, and a flush already storing
    # its events when it gave up queued it again on failure: a later flush (of any run)
    # stored them after all, when another executor may hold the run and number past its
    # last stored event (found in review).
    from code_hero.runs.events import EventType

    run = await gateway.start_run(StartRun(graph="slow", input={}, wait=True))
    log, registry = gateway.events, gateway.manager.registry
    stored = await registry.last_seq(run.run_id)
    writer = await log.writer(run.run_id, run.thread_id)
    writer.emit(EventType.CUSTOM, {"n": 1})
    real = registry.store_batch

    async def down(events: list, runs: dict, **lease: Any) -> set[str]:  # type: ignore[type-arg]
        if where == "in-a-flush-under-way":
            writer.closed = True  # what close() does once its tries are over
            log._writers.pop(writer.run_id, None)
        raise PoolBusyError("injected: the database is busy")

    monkeypatch.setattr(registry, "store_batch", down)
    monkeypatch.setattr(log, "retry_interval", 0)
    if where == "in-its-close":
        await writer.close()
    else:
        with pytest.raises(PoolBusyError):
            await log.flush()
    monkeypatch.setattr(registry, "store_batch", real)
    await log.flush()
    assert await registry.last_seq(run.run_id) == stored
    assert log.internal_sizes() == dict.fromkeys(log.internal_sizes(), 0)


async def test_a_run_starts_with_one_registry_call(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claimed run is marked RUNNING and learns where its events' numbering goes on in
    one call (`start_run`, one statement), not an update and a look for the last seq;
    its events still number on from its PENDING one, with no gap."""
    registry = gateway.manager.registry
    calls: list[str] = []
    real_start, real_update, real_last = (
        registry.start_run,
        registry.update_run,
        registry.last_seq,
    )

    async def start_run(run_id: str, started_at: Any) -> Any:
        calls.append("start_run")
        record, last = await real_start(run_id, started_at)
        assert record is not None and record.status.value == "RUNNING"
        assert record.started_at == started_at and last == 1  # its PENDING event
        return record, last

    async def update_run(run_id: str, **fields: Any) -> Any:
        calls.append(f"update_run {sorted(fields)}")
        return await real_update(run_id, **fields)

    async def last_seq(run_id: str) -> int:
        calls.append("last_seq")
        return await real_last(run_id)

    monkeypatch.setattr(registry, "start_run", start_run)
    monkeypatch.setattr(registry, "update_run", update_run)
    monkeypatch.setattr(registry, "last_seq", last_seq)
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.01}, wait=True))
    assert run.status.value == "SUCCESS" and run.started_at is not None
    assert calls == ["start_run"]
    stored = await gateway.run_events(run.run_id, first=1000)
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert [e.payload.get("status") for e in stored[:2]] == ["PENDING", "RUNNING"]


def test_the_mark_of_replayed_updates_is_no_node() -> None:
    """LangGraph marks updates it replays from a checkpoint's stored writes (a run
    resumed after a crash) with a `__metadata__` entry among the nodes' updates
    (pregel/_io.py): no NodeUpdate of a node that does not exist."""
    part = {"s1": {"steps": ["s1"]}, "__metadata__": {"cached": True}}
    assert translate((), "updates", part) == [
        (EventType.NODE_UPDATE, {"node": "s1", "namespace": "", "update": {"steps": ["s1"]}})
    ]
