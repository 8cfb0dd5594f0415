"""The event log: every run's ordered events, stored in batches, published live.

A `RunEventWriter` numbers a run's events from 1 with no gaps and publishes
each at once on the bus; the log stores what every run emitted meanwhile in
one transaction every `flush_interval` (token deltas are many: one
transaction per batch of all runs, not per token or per run). Readers see stored and not-yet-stored
events alike, so replay has no hole while a batch is in flight.

Subscribing "after seq N" first replays what is recorded, then follows the
live events, with no gap or duplicate at the seam: the subscription is
opened before the replay is read, live events at or below the last
delivered seq are dropped, and a gap (or a full queue) is filled from the log.
A run executing in another process reaches its subscribers by notifications;
one lost (a dropped LISTEN connection, a run finished by a replica that then
died) costs no more than `recheck_interval`: a subscriber that heard nothing
for that long re-reads the log after its last seq and the run's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

from code_hero.errors import BackendUnavailableError, ConflictError, NotFoundError
from code_hero.persistence import clock
from code_hero.persistence.jsonable import storable
from code_hero.persistence.records import (
    SEQ_RESERVE,
    EventRecord,
    Registry,
    RunRecord,
    RunStatus,
    ThreadStatus,
)
from code_hero.persistence.unreachable import is_refused_value
from code_hero.runs.bus import EventBus, Subscription
from code_hero.runs.events import EventType, terminal_status

__all__ = ["EventLog", "RunEventWriter"]

log = logging.getLogger(__name__)
# How long before a thread subscription began its runs are all looked at: a run created
# since may not have been visible yet (its admission committed after the look, or
# stamped by a replica whose clock is a little off), and one that was is known exactly.
# A run finished and created before it emits nothing more.
THREAD_LOOKBACK = timedelta(seconds=60)


class RunEventWriter:
    """Numbers and publishes the events of one run; the log stores them in batches."""

    def __init__(
        self,
        owner: EventLog,
        run_id: str,
        thread_id: str,
        next_seq: int,
        leased_by: str | None = None,
        reserved: int | None = None,
    ) -> None:
        self.owner = owner
        self.run_id = run_id
        self.thread_id = thread_id
        self.next_seq = next_seq
        # The highest seq that may be published before it is stored: the run's
        # `seq_reserved` as stored (None: every event is published at once). An event
        # past it waits until it is stored, or until a batch has stored a reservation
        # past it, so that a process killed outright has published no seq that the
        # run, resumed elsewhere, numbers again (`SEQ_RESERVE`).
        self.reserved = reserved
        self.published = next_seq - 1  # every seq up to this one is published
        self.held: deque[EventRecord] = deque()  # past `reserved`: published once stored
        self.closing = False  # its close gave the reservation back: none is asked again
        # The executor whose lease the run's events are stored under: once another holds
        # the run (this one stalled past its lease), they are dropped, not stored.
        self.leased_by = leased_by
        self.pending: list[EventRecord] = []
        self.inflight: list[EventRecord] = []
        self.fields: dict[str, Any] = {}  # run fields to store with the next batch
        self.closed = False
        # A store found the run another executor's (`_fence`): fenced for good. Its end
        # is not recorded here (`Executor._finish`), even if the run was claimed back
        # here meanwhile: recorded, it would have none of its later events in its log.
        self.lost = False

    def emit(self, type: EventType, payload: Mapping[str, Any]) -> EventRecord:
        """Append one event: numbered, visible to readers and subscribers at once."""
        event = EventRecord(
            self.run_id,
            self.thread_id,
            self.next_seq,
            str(type),
            storable(dict(payload)),
            clock.now(),
        )
        if self.closed:  # fenced: the run belongs to another executor now
            return event
        self.next_seq += 1
        self.pending.append(event)
        if self.held or (self.reserved is not None and event.seq > self.reserved):
            self.held.append(event)  # published once a batch stores it or a reservation
            # A batch now for the first held; the rest go with it, or the next tick.
            self.owner._dirty(self, at_once=len(self.held) == 1)
            return event
        self.published = event.seq  # readable before it is published
        self.owner.bus.publish(event)
        self.owner._dirty(self)
        return event

    def reservation(self) -> int | None:
        """The `seq_reserved` to store with the next batch, when the one stored runs
        low (half of SEQ_RESERVE left, or events held past it); None: none needed."""
        if self.reserved is None or self.closing:
            return None
        if self.next_seq - 1 + SEQ_RESERVE // 2 <= self.reserved:
            return None
        return self.next_seq - 1 + SEQ_RESERVE

    def release(self, stored: int) -> None:
        """Publish the held events a batch stored (up to seq `stored`) or its reservation
        now covers, in order."""
        limit = max(stored, self.reserved or 0)
        while self.held and self.held[0].seq <= limit:
            event = self.held.popleft()
            self.published = event.seq
            self.owner.bus.publish(event)

    def update_run(self, **fields: Any) -> None:
        """Store these run fields with the next batch (the latest value of each wins)."""
        if self.closed:
            return
        # Made storable when they are stored (`EventLog.flush`, `finish`): a run sets its
        # timeline at every step's start and end, and only the latest is stored (issue 15).
        self.fields.update(fields)
        self.owner._dirty(self)

    def unstored(self) -> list[EventRecord]:
        """Events published but not yet stored, in order (not those held: a reader
        must not see a seq that a process killed now would leave to other events)."""
        return [e for e in (*self.inflight, *self.pending) if e.seq <= self.published]

    async def flush(self) -> None:
        """Store every pending event of this run (with whatever else is pending)."""
        await self.owner.flush()
        if self.pending or self.inflight or self.fields:
            await self.owner.flush()

    async def close(self) -> None:
        """Store what is left; the writer takes no more events."""
        if self.pending:  # given back by an end that failed (`EventLog.finish`): not queued
            self.owner._waiting[self.run_id] = self
        if self.reserved is not None and not self.lost:  # (closed by an end that failed)
            # Stored with the last events: whoever resumes the run numbers on after them,
            # with no events to say lost (a drain, a release for an outage or a lock).
            # Events the run emits meanwhile (a task deaf to its cancel) are past it:
            # published only once stored, and never given a reservation again.
            self.closing = True
            self.reserved = min(self.reserved, self.next_seq - 1)
            self.fields["seq_reserved"] = self.next_seq - 1
            self.owner._waiting[self.run_id] = self
        for attempt in range(3):
            try:
                await self.flush()
                break
            except Exception as exc:
                log.warning(
                    "final store of run %s events failed (%d): %s", self.run_id, attempt, exc
                )
                if attempt < 2:
                    await asyncio.sleep(self.owner.retry_interval)
        if self.pending:
            log.error("run %s: %d events could not be stored", self.run_id, len(self.pending))
            # Given up: no later flush stores them (the failed tries queued the writer
            # again), when another executor may hold the run and number past its last
            # stored event: they would collide with its events, or follow its end.
            self.pending = []
        self.owner._waiting.pop(self.run_id, None)
        self.closed = True
        self.owner._writers.pop(self.run_id, None)


class EventLog:
    """Writers for running runs, replay for readers, subscriptions for live clients."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        bus: EventBus,
        *,
        flush_interval: float = 0.025,
        max_batch: int = 500,
        retry_interval: float = 0.5,
        recheck_interval: float = 2.0,
    ) -> None:
        self.registry = registry
        self.bus = bus
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.retry_interval = retry_interval
        self.recheck_interval = recheck_interval
        self._writers: dict[str, RunEventWriter] = {}
        self._waiting: dict[str, RunEventWriter] = {}
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    async def writer(
        self,
        run_id: str,
        thread_id: str,
        *,
        new: bool = False,
        last: int | None = None,
        started: RunRecord | None = None,
        leased_by: str | None = None,
    ) -> RunEventWriter:
        """The writer of a run; numbering goes on after the last stored event (`last`,
        when the caller has just read it), or past the seqs an earlier executor of the
        run may have published unstored (it was killed outright): those are filled
        with events saying they were lost, so the log has no gap and no seq a
        subscriber saw names another event. `started`: the run as `start_run` left it
        (its new reservation: events past it wait to be stored before they are
        published). With `leased_by` (the executor that claimed the run), its events
        are stored only while that executor holds the run."""
        existing = self._writers.get(run_id)
        if existing is not None:
            return existing
        before = 0  # the highest seq an earlier executor may have published
        if started is not None:
            before = started.seq_reserved - SEQ_RESERVE
        elif not new:
            run = await self.registry().get_run(run_id)
            if run is not None and not run.status.finished:  # an end stored them all
                before = run.seq_reserved
        if last is None:
            last = 0 if new else await self.registry().last_seq(run_id)
        writer = RunEventWriter(
            self,
            run_id,
            thread_id,
            last + 1,
            leased_by,
            None if started is None else started.seq_reserved,
        )
        self._writers[run_id] = writer
        if before > last:
            log.warning(
                "run %s: events %d-%d may have been published and never stored by the "
                "executor that ran it before (killed, stalled past its lease, or released "
                "in a database outage): stored as lost",
                run_id,
                last + 1,
                before,
            )
            said = (
                f"events {last + 1}-{before} of this run were lost: the server running it "
                "stopped, stalled past its lease or lost the database before storing them "
                "(some of these seqs may never have been used)"
            )
            for _ in range(before - last):
                writer.emit(EventType.STATUS, {"status": RunStatus.RUNNING.value, "error": said})
        return writer

    def is_writing(self, run_id: str) -> bool:
        """True while this process writes the run's events."""
        return run_id in self._writers

    def internal_sizes(self) -> dict[str, int]:
        """Entries in each per-run structure (back to 0 once every writer has closed)."""
        return {"eventlog.writers": len(self._writers), "eventlog.waiting": len(self._waiting)}

    def _dirty(self, writer: RunEventWriter, *, at_once: bool = False) -> None:
        self._waiting[writer.run_id] = writer
        if at_once or sum(len(w.pending) for w in self._waiting.values()) >= self.max_batch:
            self._start_flush()
        else:
            self._flush_later(self.flush_interval)

    def _start_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        try:
            # One batch a tick: what was emitted meanwhile waits for the next tick (or
            # goes with its run's end), not for a batch of its own right away.
            await self.flush(drain=False)
        except Exception as exc:  # kept in memory; retried on the next flush
            log.warning("storing run events failed, will retry: %s", exc)
            self._flush_later(self.retry_interval)
        else:
            if self._waiting:
                self._flush_later(self.flush_interval)

    def _flush_later(self, delay: float) -> None:
        """A flush `delay` seconds from now, unless one is armed already."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._start_flush)

    async def flush(self, *, drain: bool = True) -> None:
        """Store the pending events of every run, and the run fields set meanwhile (a
        run's timeline and usage): one transaction per batch, not per run; with
        `drain`, again while any were emitted meanwhile, else one batch."""
        async with self._lock:
            while self._waiting:
                writers, self._waiting = list(self._waiting.values()), {}
                batch: list[EventRecord] = []
                fields: dict[str, dict[str, Any]] = {}
                for w in writers:
                    w.inflight, w.pending = w.pending, []
                    batch += w.inflight
                    if w.fields and not w.lost:  # a failed end's close gives back its reservation
                        fields[w.run_id], w.fields = storable(w.fields), {}
                    if not w.closed and (reserve := w.reservation()) is not None:
                        fields.setdefault(w.run_id, {}).setdefault("seq_reserved", reserve)
                stored: dict[str, int] = {}  # the last seq stored of each run
                reserved: dict[str, int] = {}  # the seq_reserved stored of each run
                try:
                    try:
                        lost = await self.registry().store_batch(
                            batch, fields, held_by=_leases(writers)
                        )
                        _fence(writers, lost)
                        batch = [e for e in batch if e.run_id not in lost]
                        for w in writers:
                            if w.lost:
                                continue
                            if w.inflight:
                                stored[w.run_id] = w.inflight[-1].seq
                            if (r := fields.get(w.run_id, {}).get("seq_reserved")) is not None:
                                reserved[w.run_id] = r
                    except ConflictError:
                        # Another executor wrote these seqs: it holds the run now (this
                        # one lost its lease). Keep the rest, fence the writers that collided;
                        # not those whose seqs hold their own events (`_left_out_stored`).
                        await self._store_apart(writers, fields, stored)
                    except Exception as exc:
                        if not is_refused_value(exc):
                            raise
                        # A value the database refuses, of one run most likely: retried
                        # whole, the batch would be refused for ever, every run in it
                        # with it. Stored run by run, the refused rows made storable.
                        log.warning("a batch of run events was refused: %s", exc)
                        await self._store_apart(writers, fields, stored)
                except BaseException:
                    for w in writers:
                        w.pending[:0] = w.inflight
                        if w.run_id in fields:  # newer fields win
                            w.fields = {**fields[w.run_id], **w.fields}
                        # Not a writer whose close gave up meanwhile (closed, no longer
                        # the run's): queued again, a later flush would store its events
                        # when another executor may hold the run.
                        if (w.pending or w.fields) and self._writers.get(w.run_id) is w:
                            self._waiting[w.run_id] = w
                    raise
                finally:
                    for w in writers:
                        w.inflight = []
                        # Stored here (even when another writer's store failed after it,
                        # apart): its held events go out; they are queued no more.
                        if not w.lost:
                            if w.run_id in reserved:
                                w.reserved = reserved[w.run_id]
                            w.release(stored.get(w.run_id, 0))
                if batch:
                    await self.bus.stored(batch)
                if not drain:
                    return

    async def finish(
        self,
        writer: RunEventWriter,
        payload: Mapping[str, Any],
        thread_status: ThreadStatus,
        *,
        if_leased_by: str | None,
        **fields: Any,
    ) -> tuple[RunRecord | None, bool]:
        """Record the run's end (`Registry.finish_run`) with its final STATUS event
        (`payload`) and the events not stored yet, in its one transaction: all of them
        or, when the end is refused (another executor holds the run now), none. The
        final event is published only once stored; the writer takes no more events.

        Stored before a conditional end, the events of a stale executor would reach
        the log of a run taken over: an end its row does not record, seqs that
        collide with the new holder's (fencing it).

        An end that fails (a busy pool, a deadlock, the database gone) records nothing:
        the run stays unfinished, and its next claimer numbers its own events after the
        last one stored. The events not stored go back to the writer, readable still,
        and not queued: the caller stores them (`RunEventWriter.close`) while the run
        is its own, or drops them; lost, their seqs would be reused by other events,
        which followers here, past those seqs, would skip. The final event is not
        kept: the end it tells of was not recorded."""
        # A batch in flight is stored first (no gap before the end); the lock is not held
        # through the end: the other runs' batches need not wait for it.
        async with self._lock:
            self._waiting.pop(writer.run_id, None)
            fenced = writer.closed  # its seqs collided: another executor writes the run
            # Closed: it takes no more events; the rest stay readable until the end.
            writer.closed, writer.inflight, writer.pending = True, writer.pending, []
            # The end's own fields are the latest: they win over those not stored yet.
            fields, writer.fields = storable({**writer.fields, **fields}), {}
        last = EventRecord(
            writer.run_id,
            writer.thread_id,
            writer.next_seq,
            EventType.STATUS.value,
            storable(dict(payload)),
            clock.now(),
        )
        events = [] if fenced else [*writer.inflight, last]
        try:
            final, waiting = await self.registry().finish_run(
                writer.run_id,
                thread_status,
                if_leased_by=if_leased_by,
                events=events,
                **fields,
            )
        except BaseException:
            writer.pending[:0] = events[:-1]
            raise
        finally:
            writer.inflight = []
        self._writers.pop(writer.run_id, None)
        if final is not None and events:
            writer.release(last.seq - 1)  # those held past its reservation, stored now
            self.bus.publish(last)
            await self.bus.stored(events)
        return final, waiting

    async def _store_apart(
        self,
        writers: list[RunEventWriter],
        fields: dict[str, dict[str, Any]],
        stored: dict[str, int],
    ) -> None:
        """Each writer's events in a store of its own; the last seq stored of each run
        into `stored` (not a reservation: its fields may be dropped, and asked again)."""
        for w in writers:
            top = w.inflight[-1].seq if w.inflight else None
            try:
                while True:
                    try:
                        await self._store_one(w, fields.get(w.run_id))
                        if top is not None and not w.lost:
                            stored[w.run_id] = top
                        break
                    except ConflictError:
                        if not await self._left_out_stored(w):
                            raise
            except ConflictError:  # the refused path's stores too: fenced either way
                log.error("run %s: events collide with another executor's; dropped", w.run_id)
                _lost(w)
            # Stored or dropped: a later writer's failure must not queue them again (the
            # next flush would collide with them and fence the run).
            w.inflight = []
            fields.pop(w.run_id, None)

    async def _store_one(self, w: RunEventWriter, run_fields: dict[str, Any] | None) -> None:
        """One run's events (and fields) in a batch of their own; the rows the database
        refuses made storable (`_store_refused`)."""
        try:
            lost = await self.registry().store_batch(
                w.inflight, {w.run_id: run_fields} if run_fields else {}, held_by=_leases([w])
            )
            _fence([w], lost)
        except Exception as exc:
            if not is_refused_value(exc):
                raise
            await self._store_refused(w, run_fields, exc)

    async def _left_out_stored(self, w: RunEventWriter) -> bool:
        """After a store found seqs of the run taken: whether the log holds those of
        `w.inflight` exactly as they are here (then they leave it). An earlier store of
        them committed but its reply was lost (the connection cut after the COMMIT):
        to this process it failed, and the events were kept to be stored again. They
        are this writer's own, not another executor's, when their type and time (to the
        microsecond, this process's clock) are: storing the rest goes on. Any one that
        differs: another's. Not the payload: jsonb gives some numbers back as others
        (-0.0 as 0.0), and a refused event was stored as its stand-in."""
        if not w.inflight:
            return False
        first, last = w.inflight[0].seq, w.inflight[-1].seq
        stored = [
            e
            for e in await self.registry().list_events(
                w.run_id, after_seq=first - 1, limit=last - first + 1
            )
            if e.seq <= last
        ]
        ours = {e.seq: (e.type, e.at) for e in w.inflight}
        if not stored or any(ours.get(e.seq) != (e.type, e.at) for e in stored):
            return False
        log.warning(
            "run %s: events %d-%d were stored by a write whose reply was lost",
            w.run_id,
            stored[0].seq,
            stored[-1].seq,
        )
        taken = {e.seq for e in stored}
        w.inflight = [e for e in w.inflight if e.seq not in taken]
        return True

    async def _store_refused(
        self, w: RunEventWriter, run_fields: dict[str, Any] | None, refusal: Exception
    ) -> None:
        """One run's events (and fields) the database refused: its fields are dropped,
        its events stored one by one, each one refused stored with a payload saying so
        (its seq kept: the log has no gap). Stored events leave `w.inflight` as they go,
        so a failure of another kind midway queues only the rest again."""
        leases = _leases([w])

        async def store(events: list[EventRecord], fields: dict[str, Any]) -> None:
            if await self.registry().store_batch(events, fields, held_by=leases):
                _fence([w], {w.run_id})
                w.inflight.clear()  # not stored, and never to be: another holds the run

        if run_fields:
            try:
                await store(w.inflight, {w.run_id: run_fields})
                return
            except Exception as exc:
                if not is_refused_value(exc):
                    raise
            log.error("run %s: fields dropped, the database refused them: %s", w.run_id, refusal)
        while w.inflight:
            event = w.inflight[0]
            try:
                await store([event], {})
                if not w.inflight:  # fenced
                    return
            except Exception as exc:
                if not is_refused_value(exc):
                    raise
                log.error(
                    "run %s: event %d refused by the database, stored without its payload: %s",
                    w.run_id,
                    event.seq,
                    exc,
                )
                said = f"{type(exc).__name__}: {exc}"[:500]
                await store([replace(event, payload={"refused": storable(said)})], {})
            if w.inflight:
                w.inflight.pop(0)

    async def read(
        self,
        run_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        types: Collection[str] | None = None,
    ) -> list[EventRecord]:
        """Events after `after_seq` in order: stored ones, then ones not stored yet (of
        `types` only, when given: filtered in SQL)."""
        writer = self._writers.get(run_id)
        unstored = (
            writer.unstored() if writer is not None else []
        )  # before the read: see module doc
        stored = await self.registry().list_events(
            run_id, after_seq=after_seq, limit=limit, types=types
        )
        last = stored[-1].seq if stored else after_seq
        merged = stored + [
            e for e in unstored if e.seq > last and (types is None or e.type in types)
        ]
        return merged if limit is None else merged[:limit]

    async def follow_run(
        self,
        run_id: str,
        *,
        after_seq: int = 0,
        status_of: Callable[[], Awaitable[RunStatus | None]],
        types: Collection[str] | None = None,
    ) -> AsyncIterator[EventRecord]:
        """Replay after `after_seq`, then follow live; ends after the run's final event.

        `status_of` tells the run's status now (None: its row is gone). A run deleted
        before its end reached the follower (its thread deleted with the run still going,
        an operator's purge, a deletion that outwaited a frozen replica) raises
        NotFoundError once its last events are delivered: a stream never just stops
        short of the end, which a client could not tell from a dropped connection.

        With `types`, only events of those types are delivered (seqs unchanged);
        the final status event still ends the stream, delivered only if listed.
        `last` counts every seq accounted for, delivered or not, so a filtered
        replay leaves a gap before the first live event that is read (filtered)
        once from the log.
        """
        # Status events are always read: the final one ends the stream.
        reads = None if types is None else frozenset(types) | {EventType.STATUS}
        sub = self.bus.subscribe(run_id=run_id)
        last = after_seq
        looked_again = False  # at the bus, once, for the end of a run found deleted
        try:
            while True:
                sub.overflowed = False
                sub.wakeup.clear()
                for event in await self.read(run_id, after_seq=last, types=reads):
                    last = event.seq
                    if types is None or event.type in types:
                        yield event
                    if terminal_status(event):
                        return
                _drain(sub, last)
                status = await status_of()
                if (status is None or status.finished) and not await self.read(
                    run_id, after_seq=last, limit=1, types=reads
                ):
                    # The bus may hold what the log no longer does: an end stored and
                    # published, then deleted with its thread before the read above.
                    for event in _queued(sub, last):
                        last = event.seq
                        if types is None or event.type in types:
                            yield event
                        if terminal_status(event):
                            return
                    if status is None:
                        # Another replica's end, relayed by the rows (gone now) or not
                        # yet: the bus holds it as notified, a gap before it or not.
                        end = self.bus.end_of(run_id)
                        if end is not None and end.seq > last:
                            if types is None or end.type in types:
                                yield end
                            return
                        if (
                            self.bus.relays_ends
                            and not looked_again
                            and not self.is_writing(run_id)
                        ):
                            # Its notification may be on its way still: the deletion
                            # that followed it was seen first. A wake-up left from an
                            # event taken already is not it (the queue keeps events).
                            looked_again = True
                            sub.wakeup.clear()
                            await self._woken(sub, run_id)
                            continue
                        raise NotFoundError(
                            f"run {run_id!r} was deleted before it ended (its thread "
                            "deleted, or the run itself): its events went with it"
                        )
                    return
                while not sub.overflowed:
                    if not await self._woken(sub, run_id):
                        break  # nothing heard for a while: re-read the log and the status
                    sub.wakeup.clear()
                    while not sub.queue.empty():
                        event = sub.queue.get_nowait()
                        if event.seq <= last:
                            continue
                        if event.seq > last + 1:  # a gap: fill it from the log
                            for missing in await self.read(
                                run_id, after_seq=last, limit=event.seq - last - 1, types=reads
                            ):
                                if missing.seq >= event.seq:
                                    break  # a filtered read may run past the gap
                                last = missing.seq
                                if types is None or missing.type in types:
                                    yield missing
                                if terminal_status(missing):
                                    return
                        last = event.seq
                        if types is None or event.type in types:
                            yield event
                        if terminal_status(event):
                            return
        finally:
            self.bus.unsubscribe(sub)

    async def _woken(self, sub: Subscription, run_id: str) -> bool:
        """Wait for the bus; False after `recheck_interval` of silence about a run that
        another process executes (its notifications may be lost)."""
        while True:
            try:
                async with asyncio.timeout(self.recheck_interval):  # no task per wait
                    await sub.wakeup.wait()
                return True
            except TimeoutError:
                if not self.is_writing(run_id):
                    return False
                # Written here: every event reaches the bus directly, none can be lost.

    async def follow_thread(self, thread_id: str) -> AsyncIterator[EventRecord]:
        """Every event of every run on the thread from now on; never ends by itself.

        Where the thread's runs stood when the subscription began (`start`) is read once,
        before it opens, of the runs not finished or created within `THREAD_LOOKBACK`
        (`since`; a run finished before it emits nothing more); the live path reads
        nothing more. A gap (a full queue, a poke: notifications lost) drops the queue
        and reads the same of the thread again: each run is replayed after the last seq
        delivered or, for a run not delivered from yet (one started since, whose events
        went with the queue or were never notified), after `start` (0 for a run not in
        it: begun since); a run of `start` or delivered from that is not listed any more
        (finished or deleted since) is read once after where it stood. Nothing lost,
        nothing twice, nothing from before. A run or thread deleted meanwhile is
        skipped; a read that fails (the database down) ends the stream with its error,
        as `follow_run`'s do, except in an outage that leaves the thread's runs to the
        primary (or a busy pool): the gap re-reads what the fallback has of the runs
        delivered from or written here, and the whole replay is owed until a wake-up
        finds the primary back. One is owed from the start too: a run that ended between
        the read and the subscription sends nothing more to show the gap. After a full
        replay the look-back starts from it, so a long subscription's looks stay small.
        """
        since = clock.now() - THREAD_LOOKBACK
        # Read before the subscription opens: an event stored between the two is
        # replayed by a gap, where after it, it could be dropped with the queue unread.
        start = await self.registry().thread_seqs(thread_id, since=since)
        sub = self.bus.subscribe(thread_id=thread_id)
        start.update(self._written(thread_id))  # exact: published here, stored or not
        last: dict[str, int] = {}
        done: set[str] = set()  # runs found not listed any more, and read to their end
        # A replay owed: a gap replayed in part (an outage, a busy pool), or the events
        # published between the read above and the subscription (a run that ended in
        # between sends nothing more that would show the gap): looked for at once.
        owed = True
        sub.wakeup.set()
        try:
            while True:
                await sub.wakeup.wait()
                sub.wakeup.clear()
                if sub.overflowed or owed:
                    dropped = sub.overflowed
                    if dropped:
                        sub.overflowed = False
                        _drain(sub, None)
                    looked = clock.now()
                    try:
                        stored = await self.registry().thread_seqs(thread_id, since=since)
                    except BackendUnavailableError:  # only the primary has its runs
                        stored = None
                    written = self._written(thread_id)
                    owed = stored is None
                    unlisted: set[str] = set()  # finished (stored to the end) or deleted
                    if stored is not None:
                        unlisted = {*start, *last} - stored.keys() - written.keys() - done
                        runs = [
                            *stored,
                            *(r for r in written if r not in stored),
                            *(r for r in dict.fromkeys((*start, *last)) if r in unlisted),
                        ]
                    elif dropped:  # those the fallback may hold: delivered from, or ours
                        runs = [*last, *(r for r in written if r not in last)]
                    else:
                        runs = []  # nothing dropped: the queue goes on as it is
                    for run_id in runs:
                        after = last.get(run_id, start.get(run_id, 0))
                        if stored is not None and run_id not in unlisted:
                            known = max(stored.get(run_id, 0), written.get(run_id, 0))
                            if known <= after:
                                continue
                        try:
                            events = await self.read(run_id, after_seq=after)
                        except BackendUnavailableError:
                            owed = True  # run elsewhere: its events are on the primary
                            continue
                        if run_id in unlisted:
                            done.add(run_id)  # nothing more to come
                        for event in events:
                            yield event
                            last[run_id] = event.seq
                    if stored is not None and not owed:
                        # Replayed in full: every run listed is known from here on (one
                        # with no event yet from 0), so the next look need only go back
                        # from now; a run read to its end leaves `start` once `last` holds it.
                        for run_id in stored:
                            start.setdefault(run_id, 0)
                        for run_id in done & last.keys():  # `last` says where they are
                            start.pop(run_id, None)
                        since = max(since, looked - THREAD_LOOKBACK)
                    if dropped:
                        continue
                while not sub.queue.empty():
                    event = sub.queue.get_nowait()
                    seen = last.get(event.run_id)
                    if seen is None:  # not delivered from yet: from where it stood at
                        seen = start.get(event.run_id, 0)  # the start (0: begun since)
                    if event.seq <= seen:
                        continue
                    if event.seq > seen + 1:
                        try:
                            missing = await self.read(
                                event.run_id, after_seq=seen, limit=event.seq - seen - 1
                            )
                        except BackendUnavailableError:
                            owed = True  # this event and the rest come with the replay
                            break
                        for earlier in missing:
                            yield earlier
                    yield event
                    last[event.run_id] = event.seq
        finally:
            self.bus.unsubscribe(sub)

    def _written(self, thread_id: str) -> dict[str, int]:
        """The last seq this process published of each run of the thread it writes (not
        those held past a reservation: they are published later, to this subscriber too)."""
        writers = self._writers.values()
        return {w.run_id: w.published for w in writers if w.thread_id == thread_id}

    async def close(self) -> None:
        """Store what every open writer still holds."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for writer in list(self._writers.values()):
            with contextlib.suppress(Exception):
                await writer.close()


def _drain(sub: Subscription, last: int | None) -> None:
    """Drop queued events already delivered by a replay (all of them when last is None)."""
    kept = []
    while not sub.queue.empty():
        event = sub.queue.get_nowait()
        if last is not None and event.seq > last:
            kept.append(event)
    for event in kept:
        sub.queue.put_nowait(event)
    if kept:
        sub.wakeup.set()


def _queued(sub: Subscription, last: int) -> list[EventRecord]:
    """The queued events that follow seq `last` without a gap, in order, then the final
    event if one is queued past a gap (the rest dropped): the events of a deleted run
    before its end, relayed from another replica, may have gone with its rows."""
    events: dict[int, EventRecord] = {}
    while not sub.queue.empty():
        event = sub.queue.get_nowait()
        events[event.seq] = event
    following = []
    while last + 1 in events:
        last += 1
        following.append(events[last])
    if not (following and terminal_status(following[-1])):
        following += [e for s, e in sorted(events.items()) if s > last and terminal_status(e)][:1]
    return following


def _leases(writers: Collection[RunEventWriter]) -> dict[str, str]:
    """The runs among these writers' that are stored under a lease, and its holder."""
    return {w.run_id: w.leased_by for w in writers if w.leased_by is not None}


def _fence(writers: Collection[RunEventWriter], lost: Collection[str]) -> None:
    """Close the writers of runs another executor holds now: their events were left
    out of the log (stored, they would take seqs the new holder numbers too), and
    the ones they would take next go nowhere."""
    for w in writers:
        if w.run_id in lost and not w.closed:
            log.warning(
                "run %s: another executor holds it now; its events here are dropped", w.run_id
            )
            _lost(w)


def _lost(w: RunEventWriter) -> None:
    """Fence the writer of a run another executor holds: it takes no more events, and
    its run's end is not recorded through it (`RunEventWriter.lost`)."""
    w.closed = w.lost = True
