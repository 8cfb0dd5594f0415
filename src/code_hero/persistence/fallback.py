"""Fallback that loses nothing: primary, fallback, emergency, then no checkpoints.

`FallbackRouter` holds the backend slots in order and sends each call to the
active one. A write that fails on a backend because the database is gone is
retried at once on the next slot, so a run in flight goes on; the write is
also journalled. When the primary answers again, `recover()` replays the
journal into it (`recovery.py`), then the primary serves again. Reads during
an outage see both: threads written meanwhile are read from the fallback first.

Graphs reach the router through `ManagedSaver` (`managed.py`). What the
fallback holds lives in process memory: a process that dies during an outage
loses what it wrote meanwhile. Opening and probing a slot is bounded
(`slots.py`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointTuple,
)

from code_hero.errors import BackendUnavailableError
from code_hero.persistence.backends import Backend
from code_hero.persistence.coalesce import Coalescer
from code_hero.persistence.entries import DeleteThread, Entry, TouchThread
from code_hero.persistence.journal import Journal, WriteGate
from code_hero.persistence.metrics import Metrics
from code_hero.persistence.records import Registry, ThreadPurge, ThreadRecord
from code_hero.persistence.recovery import retry_quarantined, step_timeout, sync_back
from code_hero.persistence.slots import BackendSlot, BoundedCalls, close_quietly
from code_hero.persistence.stalls import StallWatch
from code_hero.persistence.unreachable import is_backend_error, is_pool_timeout

__all__ = [
    "FallbackRouter",
    "PoolBusyError",
    "PrimaryUnreachableError",
    "full_versions",
    "thread_of",
]

# The outage's two lines (one when it begins, one when it ends) come from here.
log = logging.getLogger(__name__)
R = TypeVar("R")
Outage = Literal["down", "busy"]  # what a failed call says of its database (`outage`)
TOUCH_INTERVAL = 1.0  # seconds between registry touches of one thread
BUSY_RETRY_AFTER = 1  # seconds: a pool frees a connection as soon as a call ends
_BUSY_PAUSES = (0.05, 1.0)  # a patient write's first and longest pause between tries
_KIND_NAMES = {"postgres": "PostgreSQL", "sqlite": "SQLite", "memory": "in-memory"}


class PoolBusyError(BackendUnavailableError):
    """Every connection of the pool is in use while the database answers: busy, not down."""


class PrimaryUnreachableError(BackendUnavailableError):
    """The call needs data only the primary holds, and the primary cannot be reached."""


def thread_of(config: RunnableConfig) -> str:
    """The thread id a run config names."""
    return str(config["configurable"]["thread_id"])


def full_versions(checkpoint: Checkpoint) -> ChannelVersions:
    """Versions of every channel with a value: makes a stored copy self-contained."""
    values = checkpoint["channel_values"]
    return {k: v for k, v in checkpoint["channel_versions"].items() if k in values}


class FallbackRouter:
    """Routes saver calls to the active backend slot and heals back to the primary.

    While the primary cannot be reached (`serving` is False) a thread is one of:
    - local: born during the outage; the fallback holds all of it, reads never
      ask the primary;
    - in `fallback_threads`: a run in flight went on writing to the fallback;
      its newest checkpoints are there, its history in the primary;
    - anything else: only the primary has it; reading it is UNAVAILABLE.
    A thread with a quarantined entry keeps its set across the recovery (reads merge
    the fallback's copies) until the next outage begins: the primary took its writes
    meanwhile, so in that outage it is the primary's. A deletion's mark on one of them
    goes to the primary before it serves (`switch_to_primary`); one the primary refuses
    then refuses runs on the thread from the fallback's row (`mark_waits`).
    """

    def __init__(
        self,
        slots: Sequence[BackendSlot],
        metrics: Metrics,
        *,
        journal_limit: int = 100_000,
        probe_interval: float = 5.0,
    ) -> None:
        self.slots = list(slots)
        self.probe_interval = probe_interval
        self.metrics = metrics
        self.active: int | None = None
        self.journal = Journal(journal_limit)
        self.gate = WriteGate()
        self.fallback_threads: set[str] = set()
        self.local_threads: set[str] = set()
        # Kept threads a deletion marked in the outage whose mark the primary refused at
        # the switch back: its row there reads unmarked (`mark_waits`).
        self.uncarried_marks: set[str] = set()
        self.copied_seqs: dict[str, int] = {}  # run id -> last event seq in the primary
        self.degraded_since: datetime | None = None
        # The last outage this process saw: the primary's last answer before it, and
        # when the primary served again (see `lease_clock`).
        self.last_outage: tuple[datetime, datetime] | None = None
        self._outage_began: datetime | None = None
        self.on_recovered: list[Callable[[], None]] = []
        self._touched_at: OrderedDict[str, float] = OrderedDict()
        # Touches of one registry and kind (create or not) go together.
        self._touches: Coalescer[tuple[Registry, bool], tuple[str, str | None]] = Coalescer(
            _touch_threads, shared=is_backend_error
        )
        self._recover_lock = asyncio.Lock()
        self._confirming: dict[str, asyncio.Future[bool]] = {}  # role -> its probe in flight
        # Opens and probes given up on at their deadline end in the background here.
        self.calls = BoundedCalls()
        self.stalls = StallWatch()

    # -------------------------------------------------------------- state
    @property
    def primary(self) -> BackendSlot:
        """The configured backend."""
        return self.slots[0]

    @property
    def active_slot(self) -> BackendSlot | None:
        """The slot serving reads and writes now (None: no checkpointing)."""
        return None if self.active is None else self.slots[self.active]

    @property
    def serving(self) -> bool:
        """True while the primary serves reads and writes."""
        return self.active == 0 and self.primary.backend is not None

    @property
    def pending_sync(self) -> int:
        """Writes held by a fallback, not yet copied to the primary."""
        return len(self.journal)

    @property
    def quarantined(self) -> int:
        """Writes the primary refused when they were copied; kept and retried."""
        return len(self.journal.quarantine)

    @property
    def retry_after(self) -> int:
        """Seconds a client should wait before asking again: the next probe."""
        return max(1, math.ceil(self.probe_interval))

    def unavailable(self, what: str = "this request") -> PrimaryUnreachableError:
        """The error for a call that needs the unreachable primary."""
        return PrimaryUnreachableError(
            f"the {_KIND_NAMES.get(self.primary.kind, self.primary.kind)} database is "
            f"unreachable and {what} needs data only it holds; "
            f"retry in {self.retry_after} s",
            self.retry_after,
        )

    @property
    def outage_began(self) -> datetime | None:
        """When the outage under way began, as `lease_clock` counts it (the primary's
        last answer before it); None while the primary serves."""
        return None if self.serving else self._outage_began

    def stalled_at(self, moment: datetime) -> bool:
        """Whether this process was stalled (its loop did not run: SIGSTOP, a long
        collection) at `moment`, in a stall that began before it found the primary
        unreachable in the outage under way (`StallWatch`)."""
        detected = None if self.serving else self.degraded_since
        return detected is not None and self.stalls.covers(moment, began_before=detected)

    def lease_clock(self, now: datetime, lease: timedelta) -> datetime:
        """The time to judge leases lapsed by: for one lease after an outage, its start.

        A lease that lapsed while the primary was unreachable may be held by
        another replica that ran on through the outage on its own fallback and
        has not copied its runs back yet: taking the run over would run it twice.
        Such leases count as lapsed only once that replica has had time to come
        back and sync: the outage's length again (psycopg's pool retries with a
        doubling delay, so a replica may see the database back up to that late)
        and a lease. Those that lapsed before the outage count at once.
        """
        if self.last_outage is None:
            return now
        began, ended = self.last_outage
        return min(now, began) if now < ended + (ended - began) + lease else now

    def is_local(self, thread_id: str) -> bool:
        """True when the fallback holds all of the thread (it was born during the outage)."""
        return thread_id in self.local_threads

    def mark_waits(self, thread_id: str) -> bool:
        """Whether a deletion marked the thread in the outage and the primary, serving
        again, has refused the mark so far: its row there reads unmarked, and a run
        admitted on it would go with the thread at the deletion's last step (which
        carries the mark: `_carry_mark`), unstopped. Runs on it are refused meanwhile."""
        return self.serving and thread_id in self.uncarried_marks and self.is_local(thread_id)

    async def mark_still_waits(self, thread_id: str, primary: Registry) -> bool:
        """`mark_waits`, unless the primary's row is another thread's by now (another
        replica deleted this one there and a client made it anew under the id): the
        mark is not that thread's, nor are its runs this deletion's to refuse."""
        if not self.mark_waits(thread_id):
            return False
        try:
            copy = await self._marked_copy(thread_id)
        except Exception:  # the fallback's error, not the primary's: refused as it was
            log.warning("thread %s: reading its deletion's mark failed", thread_id, exc_info=True)
            return True
        there = await primary.get_thread(thread_id, expired=True)
        if copy is not None and there is not None and there.created_at != copy.created_at:
            self.uncarried_marks.discard(thread_id)
            return False
        return True

    async def open(self) -> None:
        """Open every slot; the first that opens becomes active."""
        for index, slot in enumerate(self.slots):
            await slot.open(self.calls, enforce_references=slot is self.primary)
            if slot.healthy and self.active is None:
                self.active = index
        if self.active is None:
            log.error("no checkpoint backend could be opened: running without checkpoints")
        elif self.active != 0:
            self.metrics.switched()
            self.degraded_since = datetime.now(UTC)
            log.warning(
                "primary checkpoint backend %s is unavailable (%s); serving from %s",
                self.primary.config.describe(),
                self.primary.last_error,
                self.slots[self.active].label,
            )
        self.stalls.start()

    async def close(self) -> None:
        """Close every opened backend."""
        await self.calls.close()
        for slot in self.slots:
            if slot.backend is not None:
                await close_quietly(slot.backend)
                slot.backend = None
        self.active = None
        await self.stalls.stop()

    def busy(self, what: str = "this request") -> PoolBusyError:
        """The error for a call that waited for a connection while the database answers."""
        kind = _KIND_NAMES.get(self.primary.kind, self.primary.kind)
        return PoolBusyError(
            f"the server is busy: every {kind} connection is in use, so {what} could not "
            f"get one in time; retry in {BUSY_RETRY_AFTER} s",
            BUSY_RETRY_AFTER,
        )

    async def outage(self, slot: BackendSlot, exc: BaseException) -> Outage | None:
        """What `exc` says of the slot's database: "down" (it cannot be reached), "busy"
        (it answers, but its pool is saturated), or None (no outage: the call's own error).

        A pool timeout alone does not say down when the pool has every connection it
        may open (a saturated pool raises it too): the slot's probe, on a connection
        of its own, decides. A pool short of connections that times out could not
        open them (they are being replaced): down, as any other unreachable database.
        """
        if not is_backend_error(exc):
            return None
        if is_pool_timeout(exc) and slot.backend is not None and slot.backend.pool_saturated():
            if await self._answers(slot):
                return "busy"
            self._abandon_calls(slot)
        return "down"

    async def fail_if_down(
        self, slot: BackendSlot, exc: BaseException, what: str = "this request"
    ) -> bool:
        """Whether `exc` means the slot's database is down: then the slot is failed over.
        A saturated pool raises UNAVAILABLE "busy" instead, and nothing fails over."""
        verdict = await self.outage(slot, exc)
        if verdict == "busy":
            raise self.busy(what) from exc
        if verdict == "down":
            self.fail(slot, exc)
        return verdict == "down"

    def on_primary(self, what: str) -> AbstractAsyncContextManager[None]:
        """Around a call that needs the primary alone: when it fails because the primary
        is down, fail it over and raise UNAVAILABLE; "busy" when its pool is only
        saturated (`outage`); any other error as it is."""
        return self._failing_over(self.primary, what)

    @asynccontextmanager
    async def _failing_over(self, slot: BackendSlot, what: str) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            if not await self.fail_if_down(slot, exc, what):
                raise
            raise self.unavailable(what) from exc
        slot.answered()

    async def _answers(self, slot: BackendSlot) -> bool:
        """Whether the slot answers its probe now. One probe serves every call that
        asks meanwhile: a saturated pool times many out at once, and a connection
        each would add to the load."""
        task = self._confirming.get(slot.role)
        if task is None:
            task = asyncio.ensure_future(self._probe_answers(slot))
            self._confirming[slot.role] = task

            def done(ended: asyncio.Future[bool], role: str = slot.role) -> None:
                if self._confirming.get(role) is ended:
                    del self._confirming[role]

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _probe_answers(self, slot: BackendSlot) -> bool:
        try:
            await slot.probe(self.calls, self.metrics)
        except Exception:
            return False
        return True

    def fail_primary(self, exc: BaseException) -> None:
        """The primary could not be reached: serve from the next slot."""
        self.fail(self.primary, exc)

    def fail(self, slot: BackendSlot, exc: BaseException) -> None:
        """The slot could not be reached: mark it, and serve from the next slot if it was active."""
        was_active = self.active_slot is slot
        slot.record_failure(exc)
        if not was_active:
            return
        index = self.slots.index(slot)
        nxt = next(
            (i for i in range(index + 1, len(self.slots)) if self.slots[i].backend is not None),
            None,
        )
        self.active = nxt
        self.metrics.switched()
        if slot is self.primary:
            self.degraded_since = datetime.now(UTC)
            self._outage_began = self.primary.answered_at or self.degraded_since
            # Threads kept after the last recovery (a quarantined entry) are the
            # primary's in this outage: it took their writes while it served, so the
            # fallback no longer holds all of one, nor its newest checkpoints.
            self.local_threads.clear()
            self.fallback_threads.clear()
            self.uncarried_marks.clear()
        target = "no checkpointing" if nxt is None else self.slots[nxt].label
        # The one line an outage logs when it starts (requests answer UNAVAILABLE quietly).
        log.warning("%s backend failed (%s); switching to %s", slot.label, slot.last_error, target)

    # -------------------------------------------------------------- writes
    async def write(
        self,
        operation: str,
        thread_id: str,
        call: Callable[[BackendSlot], Awaitable[R]],
        entry: Callable[[], Entry],
        *,
        patience: float = 0.0,
    ) -> R | None:
        """Run a write on the active slot, failing over when the database is unreachable;
        when the pool is busy, try again for up to `patience` seconds after that first
        answer (which has already waited the pool's timeout) before failing."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        pause, longest = _BUSY_PAUSES
        while True:
            try:
                return await self._write(operation, thread_id, call, entry)
            except PoolBusyError:
                if deadline is None:
                    deadline = loop.time() + patience
                left = deadline - loop.time()
                if left <= 0:
                    raise
            # Outside the write gate: a recovery waiting for writes in flight is not held.
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, longest)

    async def _write(
        self,
        operation: str,
        thread_id: str,
        call: Callable[[BackendSlot], Awaitable[R]],
        entry: Callable[[], Entry],
    ) -> R | None:
        async with self.gate.write():
            while (slot := self.active_slot) is not None:
                assert slot.backend is not None
                if slot is not self.primary:
                    self.journal.ensure_room(self.retry_after)
                try:
                    with self.metrics.timed(slot.label, operation):
                        result = await call(slot)
                except Exception as exc:
                    if not await self.fail_if_down(slot, exc):
                        raise
                    continue
                if slot is self.primary:
                    slot.answered()
                else:
                    self.journal.append(entry())
                    if thread_id not in self.local_threads:
                        self.fallback_threads.add(thread_id)
                return result
            return None

    def note_touched(self, thread_id: str) -> None:
        """The registry row was just written by someone else: skip the next touch."""
        self._touched(thread_id, time.monotonic())

    def _touched(self, thread_id: str, now: float) -> None:
        # Oldest first (re-inserted on each touch): the expired ones are dropped
        # from the front, so the map holds only the last TOUCH_INTERVAL's threads.
        self._touched_at[thread_id] = now
        self._touched_at.move_to_end(thread_id)
        self._expire_touches(now)

    def _expire_touches(self, now: float) -> None:
        while self._touched_at:
            thread_id, at = next(iter(self._touched_at.items()))
            if now - at < TOUCH_INTERVAL:
                return
            del self._touched_at[thread_id]

    def internal_sizes(self) -> dict[str, int]:
        """Entries in the touch throttle (threads touched in the last TOUCH_INTERVAL)."""
        self._expire_touches(time.monotonic())
        return {"router.touched_at": len(self._touched_at)}

    async def touch(self, thread_id: str, user_id: str | None, *, create: bool = True) -> None:
        """Record activity on a thread in the registry (throttled per thread); a missing
        row is created only with `create` (not for a run's checkpoint: see ManagedSaver)."""
        now = time.monotonic()
        if now - self._touched_at.get(thread_id, -TOUCH_INTERVAL) < TOUCH_INTERVAL:
            return
        self._touched(thread_id, now)
        if thread_id in self.local_threads:  # its registry rows are copied whole
            return
        slot = self.active_slot
        if slot is not None and slot is self.primary and slot.backend is not None:
            try:
                with self.metrics.timed(slot.label, "touch_threads"):
                    # Concurrent threads' touches share one call (and one commit).
                    await self._touches.submit(
                        (slot.backend.registry, create), (thread_id, user_id)
                    )
                return
            except Exception as exc:
                verdict = await self.outage(slot, exc)
                if verdict is None:
                    raise
                if verdict == "busy":
                    # The write this touch follows is stored. A touch that only moves
                    # `updated_at` is dropped (the next one after the throttle
                    # retries); one that would create the thread's row must not be.
                    self._touched_at.pop(thread_id, None)
                    if create:
                        raise self.busy() from exc
                    log.info("thread %s: its updated_at not moved (pool busy)", thread_id)
                    return
                self.fail(slot, exc)
        if self.active_slot is not None:  # no backend at all: nothing to sync back
            self.journal.append(TouchThread(thread_id, user_id, create))

    # -------------------------------------------------------------- reads
    def _read_order(self, thread_id: str) -> list[BackendSlot]:
        fallbacks = [s for s in self.slots[1:] if s.backend is not None]
        if self.serving and (thread_id in self.local_threads or thread_id in self.fallback_threads):
            # Kept after a recovery (a quarantined entry): what is newer is in the primary.
            return [self.primary, *fallbacks]
        if thread_id in self.local_threads:
            return fallbacks
        order = fallbacks if thread_id in self.fallback_threads else []
        if self.primary.backend is not None:
            order.append(self.primary)
        elif not order:
            # The primary never opened in this process (the seed's automatic
            # fallback at start-up): graphs run on the fallback alone.
            order = fallbacks
        return order

    async def read_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint the config names (or the latest), from whichever slot has it."""
        thread_id = thread_of(config)
        for slot in self._read_order(thread_id):
            found = await self._read(slot, "get_tuple", lambda s: s.aget_tuple(config))
            if found is not None:
                return found
        return None

    async def read_list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> list[CheckpointTuple]:
        """Checkpoints newest first, merged over the slots that hold the thread."""
        if config is None:
            # Every thread: the primary is needed (`_read` refuses it while it is down).
            slots = [*(s for s in self.slots[1:] if s.backend is not None), self.primary]
        else:
            slots = self._read_order(thread_of(config))
        merged: dict[tuple[str, str, str], CheckpointTuple] = {}
        for slot in slots:

            async def listing(saver: BaseCheckpointSaver[Any]) -> list[CheckpointTuple]:
                return [
                    t async for t in saver.alist(config, filter=filter, before=before, limit=limit)
                ]

            for item in await self._read(slot, "list", listing):
                c = item.config["configurable"]
                key = (c["thread_id"], c.get("checkpoint_ns", ""), c["checkpoint_id"])
                merged.setdefault(key, item)
        ordered = sorted(merged.values(), key=lambda t: t.checkpoint["id"], reverse=True)
        return ordered if limit is None else ordered[:limit]

    async def _read(
        self,
        slot: BackendSlot,
        operation: str,
        call: Callable[[BaseCheckpointSaver[Any]], Awaitable[R]],
    ) -> R:
        if slot is self.primary and not self.serving:
            # Known to be down: answer at once; the probe finds out when it is back.
            raise self.unavailable("reading this thread")
        assert slot.backend is not None
        async with self._failing_over(slot, "reading this thread"):
            with self.metrics.timed(slot.label, operation):
                return await call(slot.backend.saver)

    async def count_checkpoints(
        self, thread_id: str, namespace: str | None = None, *, what: str = "deleting this thread"
    ) -> int:
        """How many checkpoints the thread has where it lives now (in one namespace, or all)."""
        if thread_id in self.local_threads:
            return sum(
                [
                    await s.backend.count_checkpoints(thread_id, namespace)
                    for s in self.slots[1:]
                    if s.backend
                ]
            )
        if not self.serving or self.primary.backend is None:
            raise self.unavailable(what)
        async with self.on_primary(what):
            return await self.primary.backend.count_checkpoints(thread_id, namespace)

    async def delete_thread(self, thread_id: str, *, marked: str | None = None) -> int | None:
        """Delete the thread's checkpoints from every slot that may hold them; how many
        the primary held, plus those of a thread kept across a recovery that only the
        fallbacks held (None when it was not reached: the deletion is journalled).

        During an outage only a thread born in it can be deleted; its deletion
        is journalled, so whatever of it already reached the primary goes too.
        With `marked` (its token), the last step of a deletion in steps: nothing is
        deleted where a row not marked by that deletion holds the id (a thread made
        anew since the deletion marked its row, maybe marked by another deletion since:
        `Backend.delete_orphan_checkpoints`), nor journalled; None means that then, and
        a journalled deletion answers how many the fallbacks held.
        A thread kept across a recovery (a quarantined entry) is forgotten by the
        fallbacks, registry rows and all: its entries go with it here, so no retry will
        settle it and forget it later (a deletion's mark among them is carried to the
        primary first: `_carry_mark`).
        """
        async with self.gate.write(), self.journal.step_lock:
            if not self.serving and thread_id not in self.local_threads:
                raise self.unavailable("deleting this thread")
            # Kept after a recovery: quarantined (local no longer after another outage).
            kept = thread_id in self.journal.quarantined_threads()
            held = kept or thread_id in self.fallback_threads or thread_id in self.local_threads
            removed = 0
            if marked is not None and held and not self.serving:
                # Born in the outage: its row, and the one made anew, are the fallback's.
                # Counted as they go, under the step lock: a deletion that joined this
                # one's mark finds none left (counted before, both counted them).
                for slot in self.slots[1:]:
                    if slot.backend is None:
                        continue
                    went = await slot.backend.delete_orphan_checkpoints(thread_id, marked)
                    if went is None:
                        return None
                    removed += went
                held = False
            if marked is not None and kept and self.serving:
                await self._carry_mark(thread_id, marked)
            self.journal.drop_thread_locked(thread_id)
            fallback_only: set[tuple[str, str]] = set()  # kept: what the primary lacks
            for slot in self.slots[1:]:
                if slot.backend is None or not held:
                    continue
                if self.serving:  # kept: the registry's deletion goes to the primary alone
                    fallback_only |= await slot.backend.checkpoint_keys(thread_id)
                    await slot.backend.forget_thread(thread_id)
                else:  # born in the outage: the fallback's registry deletes its rows
                    await slot.backend.saver.adelete_thread(thread_id)
            self.fallback_threads.discard(thread_id)
            if not self.serving:
                self.journal.append(DeleteThread(thread_id))
                return None if marked is None else removed
            self.local_threads.discard(thread_id)
            self.uncarried_marks.discard(thread_id)
            primary = self.primary
            assert primary.backend is not None
            async with self.on_primary("deleting this thread"):
                if fallback_only:  # counted under the step lock, with the primary's own
                    fallback_only -= await primary.backend.checkpoint_keys(thread_id)
                with self.metrics.timed(primary.label, "delete_thread"):
                    gone: int | None
                    if marked is None:
                        gone = await primary.backend.delete_checkpoints(thread_id)
                    else:
                        gone = await primary.backend.delete_orphan_checkpoints(thread_id, marked)
                return None if gone is None else gone + len(fallback_only)

    async def _carry_mark(self, thread_id: str, marked: str) -> None:
        """Put a deletion's mark, made in an outage on the fallback's row of a thread kept
        since (`marked`: its token), on the primary's row, if no deletion marked that.

        Its copy may be the entry the primary refused (quarantined), the primary's row
        the copy-back's first drain's, unmarked; the deletion's last step drops the entry
        with the others, and would find the row not its own and leave the thread (chaos
        seed 56's symptom). A retry of the entry would carry it the same way, and the
        switch back did unless the primary refused it (`_carry_marks`)."""
        primary = self.primary.backend
        assert primary is not None
        copy = await self._marked_copy(thread_id, marked)
        if copy is not None:
            async with self.on_primary("deleting this thread"):
                await primary.registry.put_thread(copy, late=True)

    async def _carry_marks(self, kept: set[str]) -> set[str]:
        """Carry the marks of deletions made in the outage on threads kept across the
        recovery (a quarantined entry: the copy of the mark may be it) to the primary's
        rows, as `_carry_mark` does; returns the threads whose mark the primary refused.

        Before the primary serves: its row of such a thread may be the first drain's,
        unmarked, and would read as live there and admit runs, which the deletion's last
        step would then delete with the thread, unstopped. An unreachable primary stops
        the switch (raised: the recovery fails over, and the next one carries it)."""
        primary = self.primary.backend
        assert primary is not None
        refused: set[str] = set()
        for thread_id in sorted(kept):
            copy = await self._marked_copy(thread_id)
            if copy is None:
                continue
            try:
                async with asyncio.timeout(step_timeout(self.primary.config)):
                    await primary.registry.put_thread(copy, late=True)
            except Exception as exc:
                if is_backend_error(exc):
                    raise
                log.warning(
                    "thread %s: the primary refused its deletion's mark (%s); runs on it "
                    "are refused until the mark is carried or the deletion ends",
                    thread_id,
                    exc,
                )
                refused.add(thread_id)
        return refused

    async def _marked_copy(self, thread_id: str, token: str | None = None) -> ThreadRecord | None:
        """The fallback's row of the thread, if a deletion marked it (with `token`: that
        deletion); None otherwise."""
        for slot in self.slots[1:]:
            if slot.backend is None:
                continue
            copy = await slot.backend.registry.get_thread(thread_id, expired=True)
            if copy is not None and copy.deletion_token is not None:
                if token is None or copy.deletion_token == token:
                    return copy
        return None

    async def purge_idle_thread(
        self, thread_id: str, live_at: datetime | None, owner: str | None = None
    ) -> ThreadPurge | None:
        """The primary's one-step deletion of a thread (`Backend.purge_idle_thread`); None
        when the thread needs `delete_thread` and the registry's: during an outage or a
        recovery, for a thread a fallback holds, or on a primary without that step."""
        backend = self.primary.backend
        if backend is None or not backend.purges_in_one_step:
            return None
        done = await self._in_one_step(
            thread_id, lambda backend: backend.purge_idle_thread(thread_id, live_at, owner)
        )
        return None if done is None else done[0]

    async def purge_orphan(self, thread_id: str) -> bool | None:
        """Delete the checkpoints of a thread the registry has no row of, in one step
        with looking for the row (`Backend.delete_orphan_checkpoints`): True when it had
        none, False when it has one (a thread made anew under the id: nothing deleted);
        None when the primary cannot answer alone: during an outage or a recovery, for a
        thread a fallback holds, while journal entries wait (then
        `EnhancedCheckpointerManager.purge_orphan` takes the steps)."""
        done = await self._in_one_step(
            thread_id, lambda backend: backend.delete_orphan_checkpoints(thread_id)
        )
        return None if done is None else done[0] is not None

    async def _in_one_step(
        self, thread_id: str, step: Callable[[Backend], Awaitable[R]]
    ) -> tuple[R] | None:
        """(`step`'s answer,) on the primary, when nothing else holds the thread: not in
        an outage or a recovery, not for a thread a fallback holds, not with journal
        entries waiting; None otherwise."""
        backend = self.primary.backend
        if not self.serving or backend is None:
            return None
        async with self.gate.write(), self.journal.step_lock:
            if (
                not self.serving
                or backend is not self.primary.backend
                or thread_id in self.local_threads
                or thread_id in self.fallback_threads
                or self.journal.entries
                or self.journal.quarantine
            ):
                return None
            async with self.on_primary("deleting this thread"):
                with self.metrics.timed(self.primary.label, "delete_thread"):
                    return (await step(backend),)

    # -------------------------------------------------------------- health
    async def probe(self, slot: BackendSlot) -> bool:
        """Probe one slot, opening the primary if it never opened; records the result."""
        if slot.backend is None:
            if slot is self.primary:
                await slot.open(self.calls, enforce_references=True)
            return slot.healthy
        try:
            await slot.probe(self.calls, self.metrics)
        except Exception as exc:
            if not is_backend_error(exc):
                raise
            self._abandon_calls(slot)
            self.fail(slot, exc)
            return False
        return True

    @staticmethod
    def _abandon_calls(slot: BackendSlot) -> None:
        """A probe, on a connection of its own, found the slot's database unreachable:
        end the calls in flight there. Statements have no bound of their own: on a
        server that stopped answering with its connections open (a partition, a frozen
        host) they would wait forever; ended, they fail as unreachable and take the
        outage's path. Only on a probe's word: one call's error (a connection the
        server ended, a pool timeout) says nothing of the calls beside it."""
        if slot.backend is not None:
            slot.backend.abandon_calls()

    async def check(self) -> None:
        """Probe every slot; heal back to the primary when it answers again."""
        for slot in self.slots:
            await self.probe(slot)
        if self.active != 0 and self.primary.healthy:
            await self.recover()
        elif self.serving and self.journal.quarantine:
            await retry_quarantined(self)

    async def recover(self) -> bool:
        """Copy what the fallback holds into the primary, then serve from the primary.

        First while writes go on (they join the journal's tail), until little is
        left; then with new writes held and none in flight, the rest, and the
        switch: no write can land in the fallback after the last drain.
        """
        async with self._recover_lock:
            return await sync_back(self)

    async def switch_to_primary(self) -> None:
        """Serve from the primary; forget the fallback's copies (quarantined ones stay).
        Called with the write gate closed and nothing in flight (`sync_back`)."""
        kept = self.journal.quarantined_threads()
        # First, while no call reaches the primary: a kept thread's mark, if any.
        uncarried = await self._carry_marks(kept & self.local_threads)
        since = self.degraded_since
        was_active = self.active
        self.active = 0
        self.degraded_since = None
        self.fallback_threads &= kept
        self.local_threads &= kept
        self.uncarried_marks = uncarried
        self.copied_seqs.clear()
        for hook in self.on_recovered:
            hook()
        # Logged and counted before the first await: `health` answers HEALTHY from here
        # on, and a caller that saw that found the line missing (a test's flake).
        if was_active != 0:
            now = datetime.now(UTC)
            self.last_outage = (self._outage_began or since or now, now)
            self.metrics.recovered()
            lasted = "" if since is None else f" after {datetime.now(UTC) - since}"
            # The one line an outage logs when it ends.
            log.warning(
                "primary backend %s serves again%s; every write made meanwhile is in it%s",
                self.primary.config.describe(),
                lasted,
                f" but {len(self.journal.quarantine)} quarantined" if kept else "",
            )
        for slot in self.slots[1:]:
            if slot.backend is not None:
                await slot.backend.forget(keep=kept)


async def _touch_threads(key: tuple[Registry, bool], touches: list[tuple[str, str | None]]) -> None:
    registry, create = key
    await registry.touch_threads(dict(touches), create=create)
