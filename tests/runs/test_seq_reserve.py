"""A run's events are published before they are stored only up to its stored
`seq_reserved`: a process killed outright has published no seq that the run, resumed
elsewhere, numbers again (test_recovery.py kills one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from code_hero.errors import ConflictError
from code_hero.gateway import Gateway
from code_hero.persistence import clock
from code_hero.persistence.records import SEQ_RESERVE, EventRecord, RunRecord, RunStatus
from code_hero.runs.eventlog import RunEventWriter
from code_hero.runs.events import EventType


async def _started(gw: Gateway, run_id: str) -> tuple[RunRecord, int]:
    """A run admitted and started as an executor starts one (no graph runs it)."""
    registry = gw.manager.registry
    await registry.admit_run(
        RunRecord(run_id=run_id, thread_id=f"t-{run_id}", graph="g", status=RunStatus.PENDING),
        reject_if_busy=True,
    )
    running, last = await registry.start_run(run_id, clock.now())
    assert running is not None
    return running, last


def _drain(queue: asyncio.Queue[EventRecord]) -> list[int]:
    seqs = []
    while not queue.empty():
        seqs.append(queue.get_nowait().seq)
    return seqs


async def test_start_run_reserves_past_the_last_stored_event(gateway: Gateway) -> None:
    running, last = await _started(gateway, "r1")
    assert running.seq_reserved == last + SEQ_RESERVE
    again, _ = await gateway.manager.registry.start_run("r1", clock.now())
    assert again is not None
    assert again.seq_reserved == last + 2 * SEQ_RESERVE  # past the earlier one's, not the log's


async def test_events_past_the_reservation_are_published_once_stored(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, last = await _started(gateway, "r1")
    events, registry = gateway.events, gateway.manager.registry
    gate = asyncio.Event()
    real = registry.store_batch
    stored_fields: list[dict[str, Any]] = []

    async def held(batch: list[EventRecord], fields: Any, **lease: Any) -> set[str]:
        stored_fields.append(dict(fields.get("r1", {})))
        await gate.wait()
        return await real(batch, fields, **lease)

    monkeypatch.setattr(registry, "store_batch", held)
    sub = events.bus.subscribe(run_id="r1")
    writer = await events.writer("r1", running.thread_id, last=last, started=running)
    emitted = [writer.emit(EventType.CUSTOM, {"n": i}).seq for i in range(SEQ_RESERVE + 5)]
    assert emitted == list(range(last + 1, last + SEQ_RESERVE + 6))
    # Published at once up to the reservation; the rest wait for their store.
    assert _drain(sub.queue) == list(range(last + 1, running.seq_reserved + 1))
    read = await events.read("r1", after_seq=last)
    assert [e.seq for e in read] == list(range(last + 1, running.seq_reserved + 1))
    gate.set()
    async with asyncio.timeout(30):
        await writer.flush()
    assert _drain(sub.queue) == list(range(running.seq_reserved + 1, emitted[-1] + 1))
    # The batch stored a reservation past them: the next events go out at once again.
    assert stored_fields[0]["seq_reserved"] == emitted[-1] + SEQ_RESERVE
    assert writer.reserved == emitted[-1] + SEQ_RESERVE
    stored = await registry.get_run("r1")
    assert stored is not None and stored.seq_reserved == writer.reserved
    nxt = writer.emit(EventType.CUSTOM, {"n": "next"})
    assert _drain(sub.queue) == [nxt.seq]
    await writer.close()


async def test_a_writer_closed_cleanly_leaves_nothing_to_say_lost(gateway: Gateway) -> None:
    """A drain (SIGTERM) stores every event and gives the reservation back: the run
    resumed elsewhere numbers on after its last event, with no events said lost."""
    running, last = await _started(gateway, "r1")
    events = gateway.events
    writer = await events.writer("r1", running.thread_id, last=last, started=running)
    for i in range(3):
        writer.emit(EventType.CUSTOM, {"n": i})
    await writer.close()
    stored = await gateway.manager.registry.get_run("r1")
    assert stored is not None and stored.seq_reserved == last + 3
    again, last_again = await gateway.manager.registry.start_run("r1", clock.now())
    assert again is not None and last_again == last + 3
    resumed = await events.writer("r1", running.thread_id, last=last_again, started=again)
    first = resumed.emit(EventType.CUSTOM, {"n": "resumed"})
    assert first.seq == last + 4
    await resumed.close()
    assert [e.type for e in await events.read("r1", after_seq=last)] == ["custom"] * 4


async def test_a_run_taken_over_numbers_past_what_its_dead_executor_may_have_published(
    gateway: Gateway,
) -> None:
    """The executor died with events published and not stored (its process killed):
    the next one fills their seqs with events saying they were lost, then goes on."""
    running, last = await _started(gateway, "r1")
    events = gateway.events
    dead = RunEventWriter(events, "r1", running.thread_id, last + 1, None, running.seq_reserved)
    seen = [dead.emit(EventType.CUSTOM, {"n": i}).seq for i in range(5)]  # never stored
    dead.pending.clear()
    events._waiting.pop("r1", None)
    again, last_again = await gateway.manager.registry.start_run("r1", clock.now())
    assert again is not None and last_again == last
    writer = await events.writer("r1", running.thread_id, last=last_again, started=again)
    nxt = writer.emit(EventType.CUSTOM, {"n": "resumed"})
    assert nxt.seq == running.seq_reserved + 1 > max(seen)
    await writer.close()
    log = await events.read("r1", after_seq=last)
    assert [e.seq for e in log] == list(range(last + 1, nxt.seq + 1))  # no gap
    fillers = log[:-1]
    assert {(e.type, e.payload["status"]) for e in fillers} == {("status", "RUNNING")}
    assert all("lost" in e.payload["error"] for e in fillers)
    # A run ended unclaimed (a cancel) after its executor died numbers on past them too.
    r2, last_r2 = await _started(gateway, "r2")
    ender = await events.writer("r2", "t-r2")
    assert ender.next_seq == r2.seq_reserved + 1 == last_r2 + SEQ_RESERVE + 1
    await ender.close()


async def test_events_emitted_while_a_close_gives_the_reservation_back_wait_for_their_store(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run emitting as its writer closes (a task deaf to its cancel at shutdown): the
    close lowers the reservation to what it stores, so what came meanwhile is published
    only once stored. Stored or not (the process killed, the close giving up), no seq
    published outranks the stored reservation and log (found by a review: published at
    once, then the next writer numbered them again)."""
    running, last = await _started(gateway, "r1")
    events, registry = gateway.events, gateway.manager.registry
    events.retry_interval = 0.01
    writer = await events.writer("r1", running.thread_id, last=last, started=running)
    sub = events.bus.subscribe(run_id="r1")
    for i in range(3):
        writer.emit(EventType.CUSTOM, {"n": i})
    real = registry.store_batch
    gate, entered = asyncio.Event(), asyncio.Event()
    calls = 0

    async def store(batch: list[EventRecord], fields: Any, **lease: Any) -> set[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            await gate.wait()
            return await real(batch, fields, **lease)
        raise OSError("later stores fail (the process dies here)")

    monkeypatch.setattr(registry, "store_batch", store)
    async with asyncio.timeout(30):
        closing = asyncio.create_task(writer.close())
        await entered.wait()
        late = [writer.emit(EventType.CUSTOM, {"late": i}).seq for i in range(3)]
        gate.set()
        await closing
    monkeypatch.setattr(registry, "store_batch", real)
    published = _drain(sub.queue)
    assert published == list(range(last + 1, last + 4)) and not set(late) & set(published)
    stored = await registry.get_run("r1")
    assert stored is not None and stored.seq_reserved == await registry.last_seq("r1")
    again, last_again = await registry.start_run("r1", clock.now())
    resumed = await events.writer("r1", running.thread_id, last=last_again, started=again)
    assert resumed.emit(EventType.CUSTOM, {"n": "resumed"}).seq > max(published)
    await resumed.close()


async def test_held_events_stored_apart_are_published_though_another_run_failed(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch stored run by run (a collision or a refused value in it) where one run's
    store fails after another's succeeded: the stored run's held events still go out
    (found by a review: they stayed held, its followers here waiting for good)."""
    a, last_a = await _started(gateway, "ra")
    b, last_b = await _started(gateway, "rb")
    events, registry = gateway.events, gateway.manager.registry
    events.flush_interval = 3600
    wa = await events.writer("ra", a.thread_id, last=last_a, started=a)
    wb = await events.writer("rb", b.thread_id, last=last_b, started=b)
    sub = events.bus.subscribe(run_id="ra")
    real = registry.store_batch
    calls = 0

    async def store(batch: list[EventRecord], fields: Any, **lease: Any) -> set[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConflictError("the batch as a whole: stored apart")
        if any(e.run_id == "rb" for e in batch):
            raise OSError("rb's own store fails")
        return await real(batch, fields, **lease)

    monkeypatch.setattr(registry, "store_batch", store)
    for i in range(SEQ_RESERVE + 3):  # three held past ra's reservation
        wa.emit(EventType.CUSTOM, {"n": i})
    wb.emit(EventType.CUSTOM, {"n": 0})
    assert len(wa.held) == 3
    with pytest.raises(OSError):
        await events.flush()
    monkeypatch.setattr(registry, "store_batch", real)
    assert not wa.held
    assert _drain(sub.queue) == list(range(last_a + 1, last_a + SEQ_RESERVE + 4))
    await wb.close()
    await wa.close()
