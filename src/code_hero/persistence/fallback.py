"""Fallback that loses nothing: primary, fallback, emergency, then no checkpoints.

`FallbackRouter` holds the backend slots in order and sends each call to the
active one. A write that fails on a backend because the database is gone is
retried at once on the next slot, so a run in flight goes on; the write is
also journalled. When the primary answers again, `recover()` replays the
journal into it (`recovery.py`), then the primary serves again. Reads during
an outage see both: threads written meanwhile are read from the fallback first.

Graphs reach the router through `ManagedSaver` (`managed.py`). The fallback
is in memory, or durable (`outagefile.py`: a SQLite file, the journal and the
router's state beside it), when a process that dies during an outage must leave
what it acknowledged to the next one, which resumes that outage at `open`.
Opening and probing a slot is bounded (`slots.py`).

The router is one class in four modules: its state and errors
(`fallback_state.py`), failing over (`fallback_failover.py`), deleting threads
and carrying a deletion's marks (`fallback_deletes.py`); opening, writes,
touches, reads and the switch back here.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointTuple,
)

from code_hero.persistence import clock
from code_hero.persistence.contention import lock_waited_out
from code_hero.persistence.entries import Entry, TouchThread, refused_end
from code_hero.persistence.fallback_deletes import RouterDeletes
from code_hero.persistence.fallback_failover import Outage
from code_hero.persistence.fallback_state import PoolBusyError, PrimaryUnreachableError, log
from code_hero.persistence.records import RunStatus
from code_hero.persistence.recovery import forget_before_read, retry_quarantined, sync_back
from code_hero.persistence.slots import BackendSlot, close_quietly

__all__ = [
    "FallbackRouter",
    "Outage",
    "PoolBusyError",
    "PrimaryUnreachableError",
    "full_versions",
    "thread_of",
    "to_its_end",
]

R = TypeVar("R")
TOUCH_INTERVAL = 1.0  # seconds between registry touches of one thread
# Seconds a run's write waits for another session's lock in place before one WARNING.
_LOCK_WAIT_WARNING = 30.0
_BUSY_PAUSES = (0.05, 1.0)  # a patient write's first and longest pause between tries


def thread_of(config: RunnableConfig) -> str:
    """The thread id a run config names."""
    return str(config["configurable"]["thread_id"])


def full_versions(checkpoint: Checkpoint) -> ChannelVersions:
    """Versions of every channel with a value: makes a stored copy self-contained."""
    values = checkpoint["channel_values"]
    return {k: v for k, v in checkpoint["channel_versions"].items() if k in values}


class FallbackRouter(RouterDeletes):
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

    async def open(self) -> None:
        """Open every slot; the first that opens becomes active. With a durable
        fallback, an outage a dead process left in its files is resumed: served from
        the fallback, and copied into the primary at once if it answers."""
        for index, slot in enumerate(self.slots):
            await slot.open(self.calls, enforce_references=slot is self.primary)
            if slot.healthy and self.active is None:
                self.active = index
        left = await self._attach_store()
        if self.active is None:
            log.error("no checkpoint backend could be opened: running without checkpoints")
        elif self.active != 0:
            self.metrics.switched()
            self.degraded_since, self._outage_began = left or (clock.now(), clock.now())
            self.save_outage()
            if self.adopted:
                log.warning(
                    "adopted fallback file %s: the database %s does not answer (%s); its "
                    "writes wait in the file, copied once it answers",
                    self.file_name,
                    self.primary.config.describe(),
                    self.primary.last_error,
                )
            else:
                log.warning(
                    "primary checkpoint backend %s is unavailable (%s); serving from %s",
                    self.primary.config.describe(),
                    self.primary.last_error,
                    self.slots[self.active].label,
                )
        elif left is not None and self.slots[1].backend is not None:
            # The primary answers: the dead process's outage ends now, as its own would.
            self.active = 1
            self.metrics.switched()
            self.degraded_since, self._outage_began = left
            await self.recover()
        self.stalls.start()

    async def _attach_store(self) -> tuple[datetime, datetime] | None:
        """Load what a dead process left in the journal's file, if any: its entries, the
        threads it left to the fallback; the outage it was in (when it began), if any."""
        if self.store is None:
            return None
        # Off the loop: a large file's entries take a while to read (a live server
        # adopting a dead replica's file serves meanwhile, `adoption.py`).
        loaded = await asyncio.to_thread(self.journal.attach, self.store, self.copied_seqs)
        self.local_threads |= loaded.local_threads
        self.fallback_threads |= loaded.fallback_threads
        outage = loaded.state.get("outage")
        if outage is None and loaded.empty and not self.local_threads | self.fallback_threads:
            # Whatever the data file holds, no entry needs it (a switch back cut short).
            fallback = self.slots[1].backend if len(self.slots) > 1 else None
            if fallback is not None:
                await fallback.forget(set())
        if outage is None:
            return None
        since, began = outage
        # An adopted file: `Adoptions` said what it adopts, with its writes and threads.
        log.log(
            logging.DEBUG if self.adopted else logging.WARNING,
            "resuming the outage a previous process left in %s (since %s): %d writes "
            "(%d quarantined) on %d threads wait for the primary",
            self.store.path,
            since.isoformat() if since else "?",
            len(self.journal),
            len(self.journal.quarantine),
            len(self.journal.threads()),
        )
        now = clock.now()
        return since or now, began or since or now

    async def close(self) -> None:
        """Close every opened backend (and release the journal's file)."""
        task, self.giving_back = self.giving_back, None
        if task is not None:
            await task  # never raises (`give_back_space`)
        await self.calls.close()
        for slot in self.slots:
            if slot.backend is not None:
                await close_quietly(slot.backend)
                slot.backend = None
        self.active = None
        await self.stalls.stop()
        store, self.store = self.store, None
        if store is not None:
            self.journal.store = None
            # Off the loop: closing the last connection checkpoints the journal's WAL
            # into its file (16-66 ms measured on a live server adopting a dead
            # replica's file, `bench/adoption.py`), and the file's lock goes with it.
            await asyncio.to_thread(store.close)

    # -------------------------------------------------------------- writes
    async def write(
        self,
        operation: str,
        thread_id: str,
        call: Callable[[BackendSlot], Awaitable[R]],
        entry: Callable[[], Entry],
        *,
        patience: float = 0.0,
        stored: Callable[[R], None] | None = None,
    ) -> R | None:
        """Run a write on the active slot, failing over when the database is unreachable;
        when the pool is busy, try again for up to `patience` seconds after that first
        answer (which has already waited the pool's timeout) before failing.

        `stored` is called with the result of the write once stored, before it returns,
        and before CancelledError when the caller was cancelled as the write went on to
        its end on the fallback (stored and journalled all the same: `to_its_end`).

        A patient write (a run's own) whose wait for another session's lock ran out
        (PostgreSQL's lock_timeout: a LOCK TABLE, a VACUUM FULL) is tried again until it
        goes through, as an unbounded wait would have: failed, the run would be released
        and resumed, repeating its step and its side effects, and end ERROR after a few
        bounds. A client's write answers busy at the bound (`contention`)."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        locked_since: float | None = None
        warned = False
        pause, longest = _BUSY_PAUSES
        while True:
            try:
                return await self._write(operation, thread_id, call, entry, stored)
            except PoolBusyError:
                if deadline is None:
                    deadline = loop.time() + patience
                left = deadline - loop.time()
                if left <= 0:
                    raise
                wait = min(pause, left)
            except Exception as exc:
                if not (patience and lock_waited_out(exc)):
                    raise
                now = loop.time()
                if locked_since is None:
                    locked_since = now
                if now - locked_since >= _LOCK_WAIT_WARNING and not warned:
                    warned = True
                    log.warning(
                        "%s of thread %s has waited %.0f s for a lock another session "
                        "holds, and waits on: %s",
                        operation,
                        thread_id,
                        now - locked_since,
                        exc,
                    )
                else:
                    log.debug("%s of thread %s waits for a lock: %s", operation, thread_id, exc)
                deadline = None  # a busy pool after it is a new wait
                wait = pause
            # Outside the write gate: a recovery waiting for writes in flight is not held.
            await asyncio.sleep(wait)
            pause = min(pause * 2, longest)

    async def _write(
        self,
        operation: str,
        thread_id: str,
        call: Callable[[BackendSlot], Awaitable[R]],
        entry: Callable[[], Entry],
        stored: Callable[[R], None] | None = None,
    ) -> R | None:
        async with self.gate.write():
            while (slot := self.active_slot) is not None:
                assert slot.backend is not None
                if slot is not self.primary:
                    self.journal.ensure_room(self.retry_after)
                cancelled = False
                try:
                    with self.metrics.timed(slot.label, operation):
                        if slot is self.primary:
                            result = await call(slot)
                        else:
                            result, cancelled = await to_its_end(call(slot))
                except Exception as exc:
                    if not await self.fail_if_down(slot, exc):
                        raise
                    continue
                if slot is self.primary:
                    slot.answered()
                else:
                    self.journal.append(entry())
                    if thread_id not in self.local_threads:
                        self.note_fallback(thread_id)
                if stored is not None:
                    stored(result)
                if cancelled:  # stored and journalled: now the caller stops
                    raise asyncio.CancelledError
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
        """Entries in the touch throttle (threads touched in the last TOUCH_INTERVAL), and
        runs whose checkpoint the copy-back refused (as long as it is quarantined)."""
        self._expire_touches(time.monotonic())
        return {
            "router.touched_at": len(self._touched_at),
            "journal.refused_runs": len(self.journal.refused_runs),
        }

    async def refused_end(self, run_id: str, thread_id: str, status: RunStatus) -> str | None:
        """The error a run ending now with `status` ends with instead: the copy-back
        refused one of its checkpoints and the primary holds nothing newer of its thread,
        so the state it ended with is not there (`entries.refused_end`); None when its
        end stands. Asked by the executor before the end is told to anyone. During an
        outage None: the end's copy-back asks again when it replays (`FinishRun`)."""
        primary = self.primary.backend
        if run_id not in self.journal.refused_runs or not self.serving or primary is None:
            return None
        try:
            return await refused_end(
                primary,
                run_id,
                thread_id,
                status,
                self.journal.refused_runs,
                ended="after the database came back",
            )
        except Exception as exc:  # the end stands: a look that failed proves nothing
            log.log(
                self.background_level(exc),
                "looking whether run %s ends without a checkpoint refused failed: %s",
                run_id,
                exc,
            )
            return None

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
            # Kept, the primary had nothing: unless another replica deleted it since.
            if slot is not self.primary and await forget_before_read(self, thread_id):
                return None
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
            # As `read_tuple`; also when the primary listed some: they may be of a thread
            # made anew under the id, and the fallback's of the deleted one (review).
            if config is not None and slot is not self.primary:
                if await forget_before_read(self, thread_of(config)):
                    break

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

    async def check(self) -> None:
        """Probe every slot; heal back to the primary when it answers again."""
        for slot in self.slots:
            await self.probe(slot)
        await self.retry_held(quarantine=False)
        if self.active != 0 and self.primary.healthy:
            await self.recover()
        elif self.serving and self.journal.quarantine:
            await retry_quarantined(self)
        if self.serving and self.untidy:
            await self.tidy_fallback()

    async def retry_held(self, *, quarantine: bool = True) -> None:
        """Read again the entries of the journal's file this process could not read at
        open (a graph's class, before the graphs loaded): those read now join the journal
        (the primary serving: the quarantine, replayed at once unless `quarantine` is
        False, when the caller's retry follows)."""
        if not self.journal.held:
            return
        async with self.journal.step_lock:
            moved = self.journal.retry_held(serving=self.serving)
        if moved and quarantine and self.serving and self.journal.quarantine:
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
        self.primary.disk_full = False  # it took the copy-back: there is room again
        self.fallback_threads &= kept
        self.local_threads &= kept
        self.uncarried_marks = uncarried
        self.copied_seqs.clear()
        for hook in self.on_recovered:
            hook()
        # Logged and counted before the first await: `health` answers HEALTHY from here
        # on, and a caller that saw that found the line missing (a test's flake).
        if was_active != 0:
            now = clock.now()
            self.last_outage = (self._outage_began or since or now, now)
            self.metrics.recovered()
            lasted = "" if since is None else f" after {clock.now() - since}"
            if self.adopted:  # its end is `Adoptions`' line, once the file is emptied
                log.log(
                    logging.WARNING if kept else logging.DEBUG,
                    "adopted fallback file %s: its writes are in the database %s%s",
                    self.file_name,
                    self.primary.config.describe(),
                    f" but {len(self.journal.quarantine)} quarantined, kept in it and "
                    "retried at each probe"
                    if kept
                    else "",
                )
            else:  # the one line an outage logs when it ends
                log.warning(
                    "primary backend %s serves again%s; every write made meanwhile is in it%s",
                    self.primary.config.describe(),
                    lasted,
                    f" but {len(self.journal.quarantine)} quarantined" if kept else "",
                )
        await self.tidy_fallback()

    async def tidy_fallback(self) -> bool:
        """With the primary serving: empty the fallback's files of what it holds now
        (the fallback's copies, the copied entries, the ended outage), then give their
        disk back. False when the fallback's file failed (its disk full): the primary
        serves on, and each check tries again (`check`)."""
        kept = self.journal.quarantined_threads()
        try:
            for slot in self.slots[1:]:
                if slot.backend is not None:
                    await slot.backend.forget(keep=kept)
            if self.store is not None:
                # No outage; only the kept threads stay the fallback's.
                self.store.save_outage(None, self.local_threads | self.fallback_threads)
                if not len(self.journal) and not self.journal.quarantine and not self.journal.held:
                    self.store.clear_entries()  # those a failed removal left (held ones stay)
            # No loaded copy can need a lease once nothing waits or is quarantined.
            self.journal.forget_leases()
        except sqlite3.Error as exc:
            if not self.untidy:
                log.warning(
                    "the fallback file %s could not be emptied after the switch back (%s): "
                    "the primary serves; tried again at each check",
                    "?" if self.store is None else self.store.path.resolve(),
                    exc,
                )
            self.untidy = True
            return False
        if self.untidy:
            log.info("the fallback file is emptied")
        self.untidy = False
        if not kept and not len(self.journal) and self.giving_back is None:
            self.giving_back = asyncio.create_task(self.give_back_space())
        return True

    async def give_back_space(self) -> None:
        """Give the disk an outage used back once the copy-back emptied the files (their
        pages stay the files' own until a VACUUM, and the -wal stays as large as it
        grew): each file compacted and its WAL truncated, off the event loop (the data
        file on its aiosqlite thread, the journal's on a thread of its own)."""
        try:
            fallback = self.slots[1].backend if len(self.slots) > 1 else None
            if fallback is not None:
                await fallback.give_back_space()
            if self.store is not None and not len(self.journal):
                await asyncio.to_thread(self.store.give_back_space)
        except Exception as exc:  # the space waits for the next switch back
            log.warning("could not give the fallback files' space back: %s", exc)
        finally:
            self.giving_back = None


async def to_its_end(step: Awaitable[R]) -> tuple[R, bool]:
    """The result of a write to a fallback, awaited to its end even when the caller is
    cancelled meanwhile, and whether it was (the caller raises CancelledError once the
    write is journalled). Once sent, the write goes on without its caller (aiosqlite's
    worker thread commits it): stored and read back (a run's `CheckpointSaved`, the
    thread's history) but never journalled, it would never reach the primary, whose
    copy-back replays the journal alone. A write that fails after the cancel came
    stored nothing: the caller is cancelled. The router's checkpoint writes pass here,
    and the registry's in an outage (`RoutedRegistry._write`: stored, then journalled)."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(task), cancelled
        except asyncio.CancelledError:
            if not task.done():
                cancelled = True
                continue
            if task.cancelled() or task.exception() is not None:
                raise
            return task.result(), True
        except Exception:
            if cancelled:
                raise asyncio.CancelledError from None
            raise
