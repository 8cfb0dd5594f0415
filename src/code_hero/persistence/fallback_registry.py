"""The registry as the fallback router serves it, through an outage and back.

While the primary serves, every call goes to its registry. When it cannot be
reached, `FallbackRegistry` answers from the fallback's registry what the
fallback can answer truthfully, and refuses the rest with UNAVAILABLE:

- a run started on a new thread is admitted into the fallback (as is a thread
  created with a fresh id, or copied from a local one): the thread is then
  *local* (the fallback holds all of it), and its rows, runs and events are
  read, written and edited there; each change journals a `CopyThread` of its
  current state, replayed into the primary on recovery;
- a run this process was executing when the outage began goes on: its row is
  in the primary, so the last copy this process saw is kept in memory,
  updated there, and each change journalled (`ChangeRun`, `FinishRun`); its
  new events go to the fallback and are copied back (`CopyEvents`);
- a run of a thread born in the outage that the fallback no longer holds was
  deleted (its thread with it): missing, as the primary would answer, so its
  executor purges what it wrote after the deletion instead of journalling it;
- anything else (another thread, a listing filtered on one) needs the
  primary: UNAVAILABLE with `retryAfter`.

Listings of threads and runs show the fallback's items during an outage; the
GraphQL layer marks such responses `extensions.degraded`. The routing and
the runs in flight are in `fallback_routing.py`, admitting, claiming and
finishing runs in `fallback_claims.py`; threads, runs and events here.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from code_hero.persistence.entries import ChangeRun, CopyEvents, DeleteRun, DeleteThread
from code_hero.persistence.fallback_claims import FallbackClaims
from code_hero.persistence.fallback_edits import FallbackEdits
from code_hero.persistence.fallback_lifecycle import FallbackLifecycle
from code_hero.persistence.records import (
    SEQ_RESERVE,
    EventRecord,
    Page,
    Registry,
    RunFilter,
    RunOrder,
    RunRecord,
    RunStatus,
    ThreadFilter,
    ThreadOrder,
    ThreadRecord,
    changed_run,
)
from code_hero.persistence.stats import RunStats, TimeBucket

__all__ = ["FallbackRegistry"]

log = logging.getLogger(__name__)


class FallbackRegistry(FallbackClaims, FallbackEdits, FallbackLifecycle, Registry):
    """Threads, runs and events: the primary's while it serves, else what the fallback can tell."""

    # ---------------------------------------------------------------- setup
    async def setup(self) -> None:
        """Run the primary registry's migrations."""
        registry = self._primary()
        if registry is None:
            raise self.router.unavailable("setting the registry up")
        await registry.setup()

    # ---------------------------------------------------------------- threads
    async def get_thread(self, thread_id: str, *, expired: bool = False) -> ThreadRecord | None:
        """One thread, or None (with `expired`, an expired one too)."""

        async def degraded() -> ThreadRecord | None:
            if not self.router.is_local(thread_id):
                raise self.router.unavailable("reading this thread")
            local = self._local("reading this thread")
            return await local.get_thread(thread_id, expired=expired)

        return await self._route(lambda r: r.get_thread(thread_id, expired=expired), degraded)

    async def get_threads(self, thread_ids: Sequence[str]) -> dict[str, ThreadRecord]:
        """Several threads in one query."""

        async def degraded() -> dict[str, ThreadRecord]:
            if not all(self.router.is_local(t) for t in thread_ids):
                raise self.router.unavailable("reading these threads")
            return await self._local("reading threads").get_threads(thread_ids)

        return await self._route(lambda r: r.get_threads(thread_ids), degraded)

    async def list_threads(
        self,
        flt: ThreadFilter,
        *,
        first: int,
        after: str | None = None,
        order: ThreadOrder | None = None,
    ) -> Page[ThreadRecord]:
        """In `order`; during an outage, the threads born in it."""

        async def degraded() -> Page[ThreadRecord]:
            self._only_local(flt, "listing these threads")
            return await self._local("listing threads").list_threads(
                flt, first=first, after=after, order=order
            )

        return await self._route(
            lambda r: r.list_threads(flt, first=first, after=after, order=order), degraded
        )

    async def count_threads(self, flt: ThreadFilter) -> int:
        """How many match; during an outage, of the threads born in it (as listings show)."""

        async def degraded() -> int:
            self._only_local(flt, "counting these threads")
            return await self._local("counting threads").count_threads(flt)

        return await self._route(lambda r: r.count_threads(flt), degraded)

    def _only_local(self, flt: ThreadFilter, what: str) -> None:
        """A filter naming threads the fallback does not hold (`ids`, AND-ed) needs the
        primary; ids inside anyOf/not only narrow a listing of the fallback's threads."""
        if flt.ids is not None and not all(self.router.is_local(t) for t in flt.ids):
            raise self.router.unavailable(what)

    async def touch_threads(
        self,
        touches: Mapping[str, str | None],
        *,
        create: bool = True,
        unless_deleted_since: datetime | None = None,
    ) -> None:
        """Bump updated_at of each thread (primary only; the router keeps touches meanwhile)."""

        async def degraded() -> None:
            raise self.router.unavailable("touching threads")

        await self._write(
            lambda r: r.touch_threads(
                touches, create=create, unless_deleted_since=unless_deleted_since
            ),
            degraded,
        )

    async def put_thread(self, thread: ThreadRecord, *, late: bool = False) -> bool:
        """Insert or replace a thread as given (primary only; `late`: `Registry.put_thread`)."""

        async def degraded() -> bool:
            raise self.router.unavailable("copying threads")

        return await self._write(lambda r: r.put_thread(thread, late=late), degraded)

    async def copy_thread(
        self, thread: ThreadRecord, runs: Sequence[RunRecord], events: Sequence[EventRecord]
    ) -> bool:
        """A thread's copy with its runs and events (primary only; `Registry.copy_thread`)."""

        async def degraded() -> bool:
            raise self.router.unavailable("copying threads")

        return await self._write(lambda r: r.copy_thread(thread, runs, events), degraded)

    async def delete_thread(self, thread_id: str, *, marked: str | None = None) -> tuple[bool, int]:
        """Delete the thread row, its runs and their events: (existed, runs deleted); with
        `marked`, only the row that deletion marked (`Registry.delete_thread`).

        During an outage only a thread born in it; its deletion is journalled after
        anything a run still ending queued meanwhile, so the primary ends without it. A
        thread made anew under the id (the fallback's row not that deletion's) keeps its
        entries.
        """

        async def degraded() -> tuple[bool, int]:
            if not self.router.is_local(thread_id):
                raise self.router.unavailable("deleting this thread")
            local = self._local("deleting this thread")
            deleted = await local.delete_thread(thread_id, marked=marked)
            if (
                marked is None
                or deleted[0]
                or await local.get_thread(thread_id, expired=True) is None
            ):
                self._journal(DeleteThread(thread_id))
            return deleted

        return await self._write(lambda r: r.delete_thread(thread_id, marked=marked), degraded)

    async def thread_ids(self, *, updated_before: datetime | None = None) -> list[str]:
        """Every thread id (primary only)."""

        async def degraded() -> list[str]:
            raise self.router.unavailable("listing every thread")

        return await self._route(lambda r: r.thread_ids(updated_before=updated_before), degraded)

    # ---------------------------------------------------------------- runs
    async def put_run(
        self,
        run: RunRecord,
        *,
        announce: bool = False,
        copied: bool = False,
        events: Sequence[EventRecord] = (),
    ) -> None:
        """Insert or replace a run as given (primary only)."""

        async def degraded() -> None:
            raise self.router.unavailable("copying runs")

        await self._write(
            lambda r: r.put_run(run, announce=announce, copied=copied, events=events), degraded
        )

    async def update_run(self, run_id: str, **fields: Any) -> RunRecord | None:
        """Set the given fields; returns the new record (None if missing)."""

        async def on_primary(registry: Registry) -> RunRecord | None:
            record = await registry.update_run(run_id, **fields)
            if record is not None:
                self._seen([record])
            return record

        return await self._write(on_primary, lambda: self._update_run_locally(run_id, fields))

    async def _update_run_locally(self, run_id: str, fields: Mapping[str, Any]) -> RunRecord | None:
        """An update during an outage: on the fallback, or a run in flight adopted."""
        record = await self._local("updating this run").update_run(run_id, **fields)
        if record is not None:
            self._copy_thread(record.thread_id)
            return record
        if self._gone(run_id):
            return None
        known = self._known(run_id)
        if known is None:
            raise self.router.unavailable("updating this run")
        # Under the lease it was claimed under (the fields could name another).
        owner = self._owner(run_id, "updating this run")
        self._journal(ChangeRun(run_id, known.thread_id, dict(fields), owner))
        return self._adopt(run_id, **fields)

    async def start_run(self, run_id: str, started_at: datetime) -> tuple[RunRecord | None, int]:
        """Mark a claimed run RUNNING; returns it and the highest seq stored for it."""

        async def on_primary(registry: Registry) -> tuple[RunRecord | None, int]:
            record, last = await registry.start_run(run_id, started_at)
            if record is not None:
                self._seen([record])
            return record, last

        async def degraded() -> tuple[RunRecord | None, int]:
            # As the two calls it stands for would go in an outage: the look first (it
            # refuses a run in flight whose events are on the primary), then the update.
            last = await self.last_seq(run_id)
            local = await self._local("starting this run").get_run(run_id)
            known = local or self._known(run_id)
            before = max(last, known.seq_reserved if known is not None else 0)
            fields = {
                "status": RunStatus.RUNNING,
                "started_at": started_at,
                "seq_reserved": before + SEQ_RESERVE,
            }
            return await self._update_run_locally(run_id, fields), last

        return await self._write(on_primary, degraded)

    async def update_held_run(
        self, run_id: str, owner: str | None, **fields: Any
    ) -> RunRecord | None:
        """Set the fields of an unfinished run `owner` holds (primary only)."""

        async def on_primary(registry: Registry) -> RunRecord | None:
            record = await registry.update_held_run(run_id, owner, **fields)
            if record is not None:
                self._seen([record])
            return record

        async def degraded() -> RunRecord | None:
            raise self.router.unavailable("updating this run")

        return await self._write(on_primary, degraded)

    async def get_run(self, run_id: str) -> RunRecord | None:
        """One run, or None."""

        async def degraded() -> RunRecord | None:
            record = await self._local("reading this run").get_run(run_id)
            if record is None and not self._gone(run_id):
                record = self._known(run_id)
                if record is None:
                    raise self.router.unavailable("reading this run")
            return record

        async def on_primary(registry: Registry) -> RunRecord | None:
            record = await registry.get_run(run_id)
            if record is None and self._may_be_kept(run_id):
                kept = await self._kept_run(run_id)
                record = None if kept is None else kept[1]
            return record

        return await self._route(on_primary, degraded)

    def _may_be_kept(self, run_id: str) -> bool:
        """Whether a fallback may keep a copy of the run the primary lacks: an entry of
        its own is quarantined, or a quarantined copy of a thread (its runs unknown here).
        In memory, no query: most reads of a missing run or of no events ask."""
        journal = self.router.journal
        return bool(journal.quarantine) and (
            run_id in journal.quarantined_runs() or bool(journal.quarantined_copies())
        )

    async def _kept_run(self, run_id: str) -> tuple[Registry, RunRecord] | None:
        """A run the primary lacks because its copy-back was refused (quarantined): a
        fallback's copy, kept across the recovery, and that fallback's registry.
        Readable, with its error, rather than gone. Only a run whose own entry (or whose
        thread's copy) is quarantined: another run of a thread with, say, a refused
        checkpoint is in the primary, and missing there only once deleted."""
        journal = self.router.journal
        runs, copies = journal.quarantined_runs(), journal.quarantined_copies()
        for slot in self.router.slots[1:]:
            if slot.backend is None:
                continue
            try:
                record = await slot.backend.registry.get_run(run_id)
            except Exception:  # a fallback's failure: the primary's answer stands
                continue
            if record is not None and (run_id in runs or record.thread_id in copies):
                return slot.backend.registry, record
        return None

    async def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        """Several runs in one query."""

        async def degraded() -> dict[str, RunRecord]:
            found = await self._local("reading runs").get_runs(run_ids)
            for run_id in run_ids:
                if run_id not in found and not self._gone(run_id):
                    known = self._known(run_id)
                    if known is None:
                        raise self.router.unavailable("reading these runs")
                    found[run_id] = known
            return found

        return await self._route(lambda r: r.get_runs(run_ids), degraded)

    async def list_runs(
        self,
        flt: RunFilter,
        *,
        first: int,
        after: str | None = None,
        order: RunOrder | None = None,
        expired: bool = False,
    ) -> Page[RunRecord]:
        """In `order`; during an outage, the runs of threads born in it."""

        async def degraded() -> Page[RunRecord]:
            if flt.thread_id is not None and not self.router.is_local(flt.thread_id):
                raise self.router.unavailable("listing this thread's runs")
            return await self._local("listing runs").list_runs(
                flt, first=first, after=after, order=order, expired=expired
            )

        return await self._route(
            lambda r: r.list_runs(flt, first=first, after=after, order=order, expired=expired),
            degraded,
        )

    async def count_runs(self, flt: RunFilter) -> int:
        """How many match; during an outage, of the runs of threads born in it (as listings)."""

        async def degraded() -> int:
            if flt.thread_id is not None and not self.router.is_local(flt.thread_id):
                raise self.router.unavailable("counting this thread's runs")
            return await self._local("counting runs").count_runs(flt)

        return await self._route(lambda r: r.count_runs(flt), degraded)

    async def run_stats(self, flt: RunFilter, bucket: TimeBucket | None = None) -> RunStats:
        """The statistics; during an outage, of the runs of threads born in it (as listings)."""

        async def degraded() -> RunStats:
            if flt.thread_id is not None and not self.router.is_local(flt.thread_id):
                raise self.router.unavailable("the statistics of this thread's runs")
            return await self._local("run statistics").run_stats(flt, bucket)

        return await self._route(lambda r: r.run_stats(flt, bucket), degraded)

    async def delete_run(self, run_id: str) -> bool:
        """Delete the run and its events."""

        async def degraded() -> bool:
            local = self._local("deleting this run")
            record = await local.get_run(run_id)
            if record is None:
                raise self.router.unavailable("deleting this run")
            deleted = await local.delete_run(run_id)
            self._journal(DeleteRun(run_id, record.thread_id))
            return deleted

        async def on_primary(registry: Registry) -> bool:
            deleted = await registry.delete_run(run_id)
            if self.router.journal.quarantine:  # a kept copy would be read in its place
                kept = await self._kept_run(run_id)
                if kept is not None:
                    try:
                        deleted = await kept[0].delete_run(run_id) or deleted
                    except Exception:  # a fallback's failure: not the primary's outage
                        log.exception("deleting the kept copy of run %s failed", run_id)
            return deleted

        return await self._write(on_primary, degraded)

    # ---------------------------------------------------------------- events
    async def store_events(self, events: Sequence[EventRecord]) -> None:
        """Store events of any runs in one transaction."""
        await self._write(
            lambda r: r.store_events(events), lambda: self._store_events_locally(events)
        )
        self._stored(events)

    def _stored(self, events: Sequence[EventRecord]) -> None:
        """The events of a run whose end failed here are stored: its lease is needed no more."""
        for event in events:
            self._unended.pop(event.run_id, None)

    async def _store_events_locally(self, events: Sequence[EventRecord]) -> None:
        if not events:
            return
        await self._local("storing events").store_events(events)
        for event in {e.run_id: e for e in events}.values():
            if self.router.is_local(event.thread_id):
                self._copy_thread(event.thread_id)
            else:
                # Under the lease they were stored under: taken over meanwhile, the run
                # is numbered on by its new holder from what the primary has. A run not
                # executed here any more (its renewal found it lost as a flush went on)
                # has no lease here: what it stores now is not copied.
                owner = self._claimed_by.get(event.run_id) or self._unended.get(event.run_id)
                if owner is None and self._known(event.run_id) is not None:
                    continue
                self._journal(
                    CopyEvents(event.run_id, event.thread_id, self.router.copied_seqs, owner)
                )

    async def store_batch(
        self,
        events: Sequence[EventRecord],
        runs: Mapping[str, Mapping[str, Any]],
        *,
        held_by: Mapping[str, str] | None = None,
    ) -> set[str]:
        """Events and run fields in one transaction (during an outage: one after the
        other, the lease checked when they are copied back: `CopyEvents`)."""
        lost: set[str] = set()

        async def on_primary(registry: Registry) -> None:
            lost.update(await registry.store_batch(events, runs, held_by=held_by))
            for run_id in lost:
                # Another executor holds it (or it ended), as a renewal would find: its
                # writer is fenced, and its end asks the registry nothing (no end, no
                # renewal: `RunExecutor._taken_over`). Kept, it would stay as executing
                # here for good, and an outage would go on with it from the copy here.
                self._drop(run_id)
            for run_id, fields in runs.items():  # as update_run's record would show them
                known = self._executing.get(run_id)
                if known is not None:
                    self._executing[run_id] = changed_run(known, fields)

        async def degraded() -> None:
            await self._store_events_locally(events)
            for run_id, fields in runs.items():
                try:  # the events are stored: a run's fields come again with its next step
                    await self._update_run_locally(run_id, fields)
                except Exception as exc:  # any: the stored events must not be queued again
                    log.warning("run %s: its timeline was not stored: %s", run_id, exc)

        await self._write(on_primary, degraded)
        self._stored([e for e in events if e.run_id not in lost])
        return lost

    async def put_events(
        self,
        events: Sequence[EventRecord],
        *,
        if_leased_by: str | None = None,
        as_copy: Literal["on_time", "late"] | None = None,
    ) -> None:
        """Store events, skipping those stored already, and with `if_leased_by` those of
        runs that executor does not hold, `as_copy` those of runs another executor took
        over (primary only; `Registry.put_events`)."""

        async def degraded() -> None:
            raise self.router.unavailable("copying events")

        await self._write(
            lambda r: r.put_events(events, if_leased_by=if_leased_by, as_copy=as_copy), degraded
        )

    async def list_events(
        self,
        run_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        types: Collection[str] | None = None,
    ) -> list[EventRecord]:
        """Events with seq > after_seq, in order (during an outage: when the fallback has
        every one of them, or this process ended the run and holds its last ones)."""

        async def degraded() -> list[EventRecord]:
            local = self._local("reading events")
            if await local.get_run(run_id) is not None or self._gone(run_id):
                return await local.list_events(
                    run_id, after_seq=after_seq, limit=limit, types=types
                )
            # A run from before the outage: the fallback has its newest events only, and
            # the last ones, of an end here, are journalled with it (held in `_ended`).
            ended = self._ended.get(run_id, ())
            first = await local.list_events(run_id, limit=1) or list(ended[:1])
            if not first or first[0].seq > after_seq + 1:
                raise self.router.unavailable("reading this run's events")
            stored = await local.list_events(run_id, after_seq=after_seq, limit=limit, types=types)
            last = stored[-1].seq if stored else after_seq
            merged = stored + [
                e for e in ended if e.seq > last and (types is None or e.type in types)
            ]
            return merged if limit is None else merged[:limit]

        async def on_primary(registry: Registry) -> list[EventRecord]:
            events = await registry.list_events(
                run_id, after_seq=after_seq, limit=limit, types=types
            )
            if not events and self._may_be_kept(run_id):
                if await registry.get_run(run_id) is None:
                    kept = await self._kept_run(run_id)
                    if kept is not None:  # its copy-back refused: the fallback's events
                        return await kept[0].list_events(
                            run_id, after_seq=after_seq, limit=limit, types=types
                        )
            return events

        return await self._route(on_primary, degraded)

    async def last_seq(self, run_id: str) -> int:
        """The highest seq stored for the run (0 when none)."""

        async def degraded() -> int:
            local = self._local("reading events")
            if await local.get_run(run_id) is None and not self._gone(run_id):
                raise self.router.unavailable("reading this run's events")
            return await local.last_seq(run_id)

        return await self._route(lambda r: r.last_seq(run_id), degraded)

    async def thread_seqs(self, thread_id: str, *, since: datetime | None = None) -> dict[str, int]:
        """The highest seq stored for each run of the thread (during an outage: of a
        thread born in it only, as `unfinished_runs`)."""

        async def degraded() -> dict[str, int]:
            if not self.router.is_local(thread_id):
                raise self.router.unavailable("reading this thread's runs")
            return await self._local("reading events").thread_seqs(thread_id, since=since)

        return await self._route(lambda r: r.thread_seqs(thread_id, since=since), degraded)
