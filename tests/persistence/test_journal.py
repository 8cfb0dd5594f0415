"""The journal's drain: threads side by side, each thread in order, nothing popped unreplayed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from code_hero.persistence.journal import Journal, PutCheckpoint, Quarantined, WriteGate


class Down(Exception):
    """Stands for an unreachable primary."""


@dataclass(frozen=True)
class Fake:
    thread_id: str
    n: int
    log: list[tuple[str, int]]
    fail: type[Exception] | None = None
    key = None

    async def replay(self, primary: Any, fallback: Any) -> None:
        await asyncio.sleep(0.001 * (self.n % 3))  # lanes finish out of order
        if self.fail is not None:
            raise self.fail(f"{self.thread_id}/{self.n}")
        self.log.append((self.thread_id, self.n))


class NoBatches:
    """A primary that takes one call at a time (the fakes are not checkpoints anyway)."""

    batches = False


async def drain(journal: Journal, synced: list[int]) -> None:
    await journal.drain(
        primary=NoBatches(),  # type: ignore[arg-type]
        fallback=None,  # type: ignore[arg-type]
        concurrency=4,
        is_unreachable=lambda exc: isinstance(exc, Down),
        on_synced=lambda: synced.append(1),
    )


async def test_each_thread_replays_in_order_and_refusals_are_quarantined() -> None:
    log: list[tuple[str, int]] = []
    journal = Journal(1000)
    for n in range(60):
        fail = ValueError if n == 7 else None
        journal.append(Fake(f"t{n % 5}", n, log, fail))  # type: ignore[arg-type]
    synced: list[int] = []
    await drain(journal, synced)
    assert len(journal) == 0 and len(synced) == 59
    assert [q.entry.n for q in journal.quarantine] == [7]  # type: ignore[attr-defined]
    for t in range(5):
        mine = [n for thread, n in log if thread == f"t{t}"]
        assert mine == sorted(mine) and len(mine) == 12 - (t == 2)


async def test_an_unreachable_primary_pops_only_the_replayed_prefix() -> None:
    log: list[tuple[str, int]] = []
    journal = Journal(1000)
    for n in range(8):
        journal.append(Fake(f"t{n % 2}", n, log, Down if n == 3 else None))  # type: ignore[arg-type]
    synced: list[int] = []
    with pytest.raises(Down):
        await drain(journal, synced)
    # 0, 1, 2 replayed and popped; 3 failed; everything from 3 on stays (replay is idempotent).
    assert [e.n for e in journal.entries] == [3, 4, 5, 6, 7]  # type: ignore[attr-defined]
    assert len(synced) == 3 and not journal.quarantine
    assert (("t1", 5) not in log) and (("t1", 7) not in log)  # t1 stopped at 3


class BatchingPrimary:
    """A primary that takes batches: records each batch, or fails as told."""

    batches = True

    def __init__(self, fail: Exception | None = None, poison: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail = fail
        self.poison = poison
        self.saver = self

    async def put_batch(self, items: list[PutCheckpoint]) -> None:
        ns = [int(i.checkpoint["id"]) for i in items]
        if self.fail is not None:
            raise self.fail
        if self.poison in ns:
            raise ValueError("refused")
        self.calls.append(ns)

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, versions: Any) -> None:
        if int(checkpoint["id"]) == self.poison:
            raise ValueError("refused")
        self.calls.append([int(checkpoint["id"])])


def put(thread: str, n: int) -> PutCheckpoint:
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    return PutCheckpoint(config, {"id": str(n)}, {}, {})  # type: ignore[typeddict-item]


async def drain_into(journal: Journal, primary: BatchingPrimary, synced: list[int]) -> None:
    await journal.drain(
        primary=primary,  # type: ignore[arg-type]
        fallback=None,  # type: ignore[arg-type]
        concurrency=4,
        is_unreachable=lambda exc: isinstance(exc, Down),
        on_synced=lambda: synced.append(1),
    )


async def test_a_threads_checkpoints_go_in_as_batches_in_order() -> None:
    journal = Journal(1000)
    for n in range(12):
        journal.append(put(f"t{n % 3}", n))
    primary, synced = BatchingPrimary(), []
    await drain_into(journal, primary, synced)
    assert len(journal) == 0 and len(synced) == 12
    assert sorted(primary.calls) == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]


async def test_a_refused_batch_goes_entry_by_entry_and_only_the_poison_is_quarantined() -> None:
    journal = Journal(1000)
    for n in range(8):
        journal.append(put(f"t{n % 2}", n))
    primary, synced = BatchingPrimary(poison=4), []
    await drain_into(journal, primary, synced)
    assert len(journal) == 0 and len(synced) == 7
    assert [q.entry for q in journal.quarantine] == [put("t0", 4)]
    assert sorted(primary.calls) == [[0], [1, 3, 5, 7], [2], [6]]


async def test_an_unreachable_primary_during_a_batch_pops_nothing_of_it() -> None:
    journal = Journal(1000)
    for n in range(6):
        journal.append(put("t0", n))
    primary, synced = BatchingPrimary(fail=Down("gone")), []
    with pytest.raises(Down):
        await drain_into(journal, primary, synced)
    assert len(journal) == 6 and not synced and not journal.quarantine and not primary.calls


@dataclass(frozen=True)
class Gated:
    """An entry whose replay waits until the test lets it go, then fails or not."""

    thread_id: str
    started: asyncio.Event
    go: asyncio.Event
    fail: bool
    key = None

    async def replay(self, primary: Any, fallback: Any) -> None:
        self.started.set()
        await self.go.wait()
        if self.fail:
            raise ValueError("refused again")


@pytest.mark.parametrize("fail", [True, False])
async def test_an_entry_being_retried_still_counts_as_quarantined(fail: bool) -> None:
    """Health and /metrics read the quarantine while a retry waits on the primary; the
    entry in flight was missing from both (a health call answered 1 of 2)."""
    journal = Journal(1000)
    started, go = asyncio.Event(), asyncio.Event()
    journal.quarantine.append(Quarantined(Gated("poison", started, go, fail), 1, "refused"))  # type: ignore[arg-type]
    journal.quarantine.append(Quarantined(Fake("other", 0, [], ValueError), 1, "refused"))  # type: ignore[arg-type]
    retry = asyncio.create_task(
        journal.retry_quarantined(
            primary=None,  # type: ignore[arg-type]
            fallback=None,  # type: ignore[arg-type]
            is_unreachable=lambda exc: isinstance(exc, Down),
        )
    )
    await started.wait()
    assert len(journal.quarantine) == 2
    assert journal.threads() == {"poison", "other"}  # its fallback copies are kept
    go.set()
    done, stopped = await retry
    assert stopped is None  # refused, not unreachable
    assert len(done) == (0 if fail else 1)
    assert [q.entry.thread_id for q in journal.quarantine] == (
        ["poison", "other"] if fail else ["other"]
    )


@pytest.mark.parametrize("step", ["drain", "retry"])
async def test_a_recovery_stopped_as_an_entry_goes_in_stops_there(step: str) -> None:
    """On Python 3.11 asyncio.wait_for returns a result that arrives with a cancel and
    drops the cancel: a quarantine retry stopped then (shutdown cancels the health loop)
    went on and returned, and the loop ran on, and its shutdown with it, for good; a
    drain's lane replayed the rest of its batch first."""
    journal = Journal(1000)
    started, go = asyncio.Event(), asyncio.Event()
    log: list[tuple[str, int]] = []
    first, second = Gated("t", started, go, False), Fake("t", 1, log)
    if step == "drain":
        for entry in (first, second):
            journal.append(entry)  # type: ignore[arg-type]
        replay = drain(journal, [])
    else:
        for entry in (first, second):
            journal.quarantine.append(Quarantined(entry, 1, "refused"))  # type: ignore[arg-type]
        replay = journal.retry_quarantined(
            primary=None,  # type: ignore[arg-type]
            fallback=None,  # type: ignore[arg-type]
            is_unreachable=lambda exc: isinstance(exc, Down),
        )
    task = asyncio.ensure_future(replay)
    await started.wait()
    go.set()  # the entry goes in as the stop comes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == []  # nothing after it


async def test_a_retry_an_unreachable_primary_stops_hands_back_what_went_before() -> None:
    """The error that stops a retry goes to the caller with the entries replayed before
    it: the caller judges the error (a pool timeout may be a busy pool only) and, if the
    primary still serves, forgets those entries' fallback copies; failed over, it leaves
    them to the next switch back. Raised, the list was lost with it: a busy primary
    serving on, their threads stayed kept, read through the fallback's copies."""
    journal, log = Journal(1000), []
    for entry in (Fake("a", 0, log), Fake("b", 1, log, Down), Fake("c", 2, log)):
        journal.quarantine.append(Quarantined(entry, 1, "refused"))  # type: ignore[arg-type]
    done, stopped = await journal.retry_quarantined(
        primary=None,  # type: ignore[arg-type]
        fallback=None,  # type: ignore[arg-type]
        is_unreachable=lambda exc: isinstance(exc, Down),
    )
    assert [e.thread_id for e in done] == ["a"] and isinstance(stopped, Down)
    assert log == [("a", 0)]  # nothing after the error
    assert [q.entry.thread_id for q in journal.quarantine] == ["c", "b"]


@dataclass(frozen=True)
class Copy:
    """Stands for `CopyThread`: copies what the fallback has now, ended runs or not."""

    thread_id: str
    log: list[tuple[str, int | str]]
    finished: bool = True

    @property
    def key(self) -> tuple[str, str]:
        return ("thread", self.thread_id)

    def unfinished(self) -> Copy:
        return Copy(self.thread_id, self.log, finished=False)

    async def replay(self, primary: Any, fallback: Any) -> None:
        self.log.append((self.thread_id, "runs with their ends" if self.finished else "runs"))


async def test_a_copy_with_checkpoints_behind_it_brings_the_runs_ends_after_them() -> None:
    log: list[tuple[str, int | str]] = []
    journal = Journal(1000)
    journal.append(Copy("t0", log))  # type: ignore[arg-type]
    for n in range(3):
        journal.append(Fake("t0", n, log))  # type: ignore[arg-type]
    journal.append(Copy("t1", log))  # type: ignore[arg-type]: nothing of t1 behind it
    journal.append(Copy("t0", log))  # type: ignore[arg-type]: one is waiting: redundant
    synced: list[int] = []
    await drain(journal, synced)
    assert len(journal) == 0
    assert [what for thread, what in log if thread == "t0"] == [
        "runs",
        0,
        1,
        2,
        "runs with their ends",
    ]
    assert [what for thread, what in log if thread == "t1"] == ["runs with their ends"]


async def test_a_deferred_copy_counts_as_synced_once() -> None:
    # Replayed unfinished, then again at the tail: one entry of the journal, one synced.
    log: list[tuple[str, int | str]] = []
    journal = Journal(1000)
    journal.append(Copy("t0", log))  # type: ignore[arg-type]
    journal.append(Fake("t0", 0, log))  # type: ignore[arg-type]
    synced: list[int] = []
    await drain(journal, synced)
    assert [what for _, what in log] == ["runs", 0, "runs with their ends"]
    assert len(synced) == 2


async def test_the_write_gate_holds_new_writers_and_waits_out_those_in_flight() -> None:
    gate = WriteGate()
    inside = asyncio.Event()
    leave = asyncio.Event()
    order: list[str] = []

    async def writer(name: str, fail: bool = False) -> None:
        async with gate.write():
            order.append(f"{name} in")
            inside.set()
            await leave.wait()
            order.append(f"{name} out")
            if fail:
                raise ValueError(name)

    async def closer() -> None:
        async with gate.closed():
            order.append("closed")
            await asyncio.sleep(0.01)
            order.append("open")

    first = asyncio.create_task(writer("a", fail=True))
    await inside.wait()
    closing = asyncio.create_task(closer())
    await asyncio.sleep(0.01)
    late = asyncio.create_task(writer("b"))
    await asyncio.sleep(0.01)
    assert order == ["a in"]  # the close waits for a; b waits for the close
    leave.set()
    with pytest.raises(ValueError):  # a failed write lets the gate go all the same
        await first
    await closing
    await late
    assert order == ["a in", "a out", "closed", "open", "b in", "b out"]
