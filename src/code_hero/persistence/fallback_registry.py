"""The registry as the fallback router serves it, through an outage and back.

While the primary serves, every call goes to its registry. When it cannot be
reached, `FallbackRegistry` answers from the fallback's registry what the
fallback can answer truthfully, and refuses the rest with UNAVAILABLE:

- a run started on a new thread is admitted into the fallback: the thread is
  then *local* (the fallback holds all of it), and its rows, runs and events
  are read and written there; each change journals a `CopyThread` of its
  current state, replayed into the primary on recovery;
- a run this process was executing when the outage began goes on: its row is
  in the primary, so the last copy this process saw is kept in memory,
  updated there, and each change journalled (`ChangeRun`, `FinishRun`); its
  new events go to the fallback and are copied back (`CopyEvents`);
- anything else (another thread, a listing filtered on one) needs the
  primary: UNAVAILABLE with `retryAfter`.

Listings of threads and runs show the fallback's items during an outage; the
GraphQL layer marks such responses `extensions.degraded`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from code_hero.persistence.backends import is_backend_error
from code_hero.persistence.fallback import FallbackRouter
from code_hero.persistence.journal import (
    ChangeRun,
    CopyEvents,
    CopyThread,
    DeleteRun,
    Entry,
    FinishRun,
)
from code_hero.persistence.records import (
    EventRecord,
    Page,
    Registry,
    RunFilter,
    RunRecord,
    ThreadFilter,
    ThreadRecord,
    ThreadStatus,
)

__all__ = ["FallbackRegistry"]

T = TypeVar("T")


class FallbackRegistry(Registry):
    """Threads, runs and events: the primary's while it serves, else what the fallback can tell."""

    def __init__(self, router: FallbackRouter) -> None:
        self.router = router
        # Runs this process executes, as last seen: what a run in flight at the start
        # of an outage goes on from. Bounded by the runs executing here.
        self._executing: dict[str, RunRecord] = {}
        # Those of them changed during the outage (the primary has an older row).
        self._adopted: dict[str, RunRecord] = {}
        router.on_recovered.append(self._adopted.clear)

    def internal_sizes(self) -> dict[str, int]:
        """Entries in the per-run maps (executing: runs held here; adopted: until recovery)."""
        return {"registry.executing": len(self._executing), "registry.adopted": len(self._adopted)}

    # ---------------------------------------------------------------- routing
    def _primary(self) -> Registry | None:
        backend = self.router.primary.backend
        return backend.registry if self.router.serving and backend is not None else None

    def _local(self, what: str) -> Registry:
        slot = self.router.active_slot
        if slot is None or slot.backend is None or slot is self.router.primary:
            raise self.router.unavailable(what)
        return slot.backend.registry

    async def _route(
        self,
        on_primary: Callable[[Registry], Awaitable[T]],
        degraded: Callable[[], Awaitable[T]],
    ) -> T:
        registry = self._primary()
        if registry is not None:
            try:
                return await on_primary(registry)
            except Exception as exc:
                if not is_backend_error(exc):
                    raise
                self.router.fail_primary(exc)
        return await degraded()

    async def _write(
        self,
        on_primary: Callable[[Registry], Awaitable[T]],
        degraded: Callable[[], Awaitable[T]],
    ) -> T:
        async with self.router.gate.write():
            return await self._route(on_primary, degraded)

    def _journal(self, entry: Entry) -> None:
        self.router.journal.append(entry)

    def _copy_thread(self, thread_id: str) -> None:
        self._journal(CopyThread(thread_id, self.router.copied_seqs))

    def _room(self) -> None:
        self.router.journal.ensure_room(self.router.retry_after)

    def _known(self, run_id: str) -> RunRecord | None:
        return self._adopted.get(run_id) or self._executing.get(run_id)

    def _adopt(self, run_id: str, **fields: Any) -> RunRecord | None:
        """Apply a change to a run in flight since before the outage (in memory)."""
        known = self._known(run_id)
        if known is None:
            return None
        changed = replace(known, **fields)
        self._adopted[run_id] = changed
        if run_id in self._executing:
            self._executing[run_id] = changed
        return changed

    def _seen(self, records: Sequence[RunRecord], *, claimed: bool = False) -> None:
        for record in records:
            if claimed or record.run_id in self._executing:
                self._executing[record.run_id] = record

    # ---------------------------------------------------------------- setup
    async def setup(self) -> None:
        """Run the primary registry's migrations."""
        registry = self._primary()
        if registry is None:
            raise self.router.unavailable("setting the registry up")
        await registry.setup()

    # ---------------------------------------------------------------- threads
    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        """One thread, or None."""

        async def degraded() -> ThreadRecord | None:
            if not self.router.is_local(thread_id):
                raise self.router.unavailable("reading this thread")
            return await self._local("reading this thread").get_thread(thread_id)

        return await self._route(lambda r: r.get_thread(thread_id), degraded)

    async def get_threads(self, thread_ids: Sequence[str]) -> dict[str, ThreadRecord]:
        """Several threads in one query."""

        async def degraded() -> dict[str, ThreadRecord]:
            if not all(self.router.is_local(t) for t in thread_ids):
                raise self.router.unavailable("reading these threads")
            return await self._local("reading threads").get_threads(thread_ids)

        return await self._route(lambda r: r.get_threads(thread_ids), degraded)

    async def list_threads(
        self, flt: ThreadFilter, *, first: int, after: str | None = None
    ) -> Page[ThreadRecord]:
        """Newest updated first; during an outage, the threads born in it."""

        async def degraded() -> Page[ThreadRecord]:
            return await self._local("listing threads").list_threads(flt, first=first, after=after)

        return await self._route(lambda r: r.list_threads(flt, first=first, after=after), degraded)

    async def touch_threads(
        self, touches: Mapping[str, str | None], *, create: bool = True
    ) -> None:
        """Bump updated_at of each thread (primary only; the router keeps touches meanwhile)."""

        async def degraded() -> None:
            raise self.router.unavailable("touching threads")

        await self._write(lambda r: r.touch_threads(touches, create=create), degraded)

    async def put_thread(self, thread: ThreadRecord) -> None:
        """Insert or replace a thread as given (primary only)."""

        async def degraded() -> None:
            raise self.router.unavailable("copying threads")

        await self._write(lambda r: r.put_thread(thread), degraded)

    async def delete_thread(self, thread_id: str) -> tuple[bool, int]:
        """Delete the thread row, its runs and their events: (existed, runs deleted).

        During an outage only a thread born in it; the router journals the deletion.
        """

        async def degraded() -> tuple[bool, int]:
            if not self.router.is_local(thread_id):
                raise self.router.unavailable("deleting this thread")
            return await self._local("deleting this thread").delete_thread(thread_id)

        return await self._write(lambda r: r.delete_thread(thread_id), degraded)

    async def thread_ids(self, *, updated_before: datetime | None = None) -> list[str]:
        """Every thread id (primary only)."""

        async def degraded() -> list[str]:
            raise self.router.unavailable("listing every thread")

        return await self._route(lambda r: r.thread_ids(updated_before=updated_before), degraded)

    # ---------------------------------------------------------------- runs
    async def put_run(self, run: RunRecord) -> None:
        """Insert or replace a run as given (primary only)."""

        async def degraded() -> None:
            raise self.router.unavailable("copying runs")

        await self._write(lambda r: r.put_run(run), degraded)

    async def update_run(self, run_id: str, **fields: Any) -> RunRecord | None:
        """Set the given fields; returns the new record (None if missing)."""

        async def on_primary(registry: Registry) -> RunRecord | None:
            record = await registry.update_run(run_id, **fields)
            if record is not None:
                self._seen([record])
            return record

        async def degraded() -> RunRecord | None:
            record = await self._local("updating this run").update_run(run_id, **fields)
            if record is not None:
                self._copy_thread(record.thread_id)
                return record
            adopted = self._adopt(run_id, **fields)
            if adopted is None:
                raise self.router.unavailable("updating this run")
            self._journal(ChangeRun(run_id, adopted.thread_id, fields))
            return adopted

        return await self._write(on_primary, degraded)

    async def get_run(self, run_id: str) -> RunRecord | None:
        """One run, or None."""

        async def degraded() -> RunRecord | None:
            record = await self._local("reading this run").get_run(run_id)
            if record is None:
                record = self._known(run_id)
            if record is None:
                raise self.router.unavailable("reading this run")
            return record

        return await self._route(lambda r: r.get_run(run_id), degraded)

    async def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        """Several runs in one query."""

        async def degraded() -> dict[str, RunRecord]:
            found = await self._local("reading runs").get_runs(run_ids)
            for run_id in run_ids:
                if run_id not in found:
                    known = self._known(run_id)
                    if known is None:
                        raise self.router.unavailable("reading these runs")
                    found[run_id] = known
            return found

        return await self._route(lambda r: r.get_runs(run_ids), degraded)

    async def list_runs(
        self, flt: RunFilter, *, first: int, after: str | None = None
    ) -> Page[RunRecord]:
        """Newest created first; during an outage, the runs of threads born in it."""

        async def degraded() -> Page[RunRecord]:
            if flt.thread_id is not None and not self.router.is_local(flt.thread_id):
                raise self.router.unavailable("listing this thread's runs")
            return await self._local("listing runs").list_runs(flt, first=first, after=after)

        return await self._route(lambda r: r.list_runs(flt, first=first, after=after), degraded)

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

        return await self._write(lambda r: r.delete_run(run_id), degraded)

    # ---------------------------------------------------------------- claiming
    async def admit_run(
        self,
        run: RunRecord,
        *,
        reject_if_busy: bool,
        events: Sequence[EventRecord] = (),
        owner: str | None = None,
        new_thread: bool = False,
    ) -> tuple[RunRecord | None, str | None]:
        """Record a PENDING run; during an outage only on a new or local thread."""

        async def on_primary(registry: Registry) -> tuple[RunRecord | None, str | None]:
            return await registry.admit_run(
                run, reject_if_busy=reject_if_busy, events=events, owner=owner
            )

        async def degraded() -> tuple[RunRecord | None, str | None]:
            if not new_thread and not self.router.is_local(run.thread_id):
                raise self.router.unavailable("starting a run on this thread")
            self._room()
            admitted = await self._local("starting a run").admit_run(
                run, reject_if_busy=reject_if_busy, events=events, owner=owner
            )
            self.router.local_threads.add(run.thread_id)
            if admitted[0] is not None:
                self._copy_thread(run.thread_id)
            return admitted

        return await self._write(on_primary, degraded)

    async def finish_run(
        self, run_id: str, thread_status: ThreadStatus, **fields: Any
    ) -> tuple[RunRecord | None, bool]:
        """End a run and set its thread's status, in one transaction."""

        async def on_primary(registry: Registry) -> tuple[RunRecord | None, bool]:
            return await registry.finish_run(run_id, thread_status, **fields)

        async def degraded() -> tuple[RunRecord | None, bool]:
            record, waiting = await self._local("finishing this run").finish_run(
                run_id, thread_status, **fields
            )
            if record is not None:
                self._copy_thread(record.thread_id)
                return record, waiting
            adopted = self._adopt(run_id, **fields)
            if adopted is None:
                raise self.router.unavailable("finishing this run")
            self._journal(FinishRun(run_id, adopted.thread_id, dict(fields)))
            # Runs queued on the thread are in the primary: claimed once it is back.
            return adopted, False

        try:
            return await self._write(on_primary, degraded)
        finally:
            # Ended, or its end could not be recorded anywhere: this process holds the
            # run no longer either way (its lease lapses and another executor resumes it).
            self._executing.pop(run_id, None)

    async def unfinished_runs(self, thread_id: str) -> list[RunRecord]:
        """The thread's PENDING and RUNNING runs, oldest first."""

        async def degraded() -> list[RunRecord]:
            if not self.router.is_local(thread_id):
                raise self.router.unavailable("reading this thread's runs")
            return await self._local("reading runs").unfinished_runs(thread_id)

        return await self._route(lambda r: r.unfinished_runs(thread_id), degraded)

    async def claim_runs(
        self,
        owner: str,
        *,
        now: datetime,
        until: datetime,
        limit: int,
        graphs: Sequence[str] | None = None,
        run_ids: Sequence[str] | None = None,
    ) -> list[RunRecord]:
        """Lease claimable runs (during an outage: those of local threads; for a lease's
        time after it, not those whose lease lapsed in it: see `FallbackRouter.lease_clock`)."""

        lease = until - now

        async def claim(registry: Registry, lapsed_by: datetime) -> list[RunRecord]:
            # The lease counts from now: a failed attempt on the primary may have
            # taken pool_timeout, and a lease already over would be claimed twice.
            start = datetime.now(UTC)
            claimed = await registry.claim_runs(
                owner,
                now=min(lapsed_by, start),
                until=start + lease,
                limit=limit,
                graphs=graphs,
                run_ids=run_ids,
            )
            self._seen(claimed, claimed=True)
            return claimed

        async def on_primary(registry: Registry) -> list[RunRecord]:
            return await claim(registry, self.router.lease_clock(now, lease))

        async def degraded() -> list[RunRecord]:
            claimed = await claim(self._local("claiming runs"), datetime.now(UTC))
            for thread_id in {r.thread_id for r in claimed}:
                self._copy_thread(thread_id)
            return claimed

        return await self._write(on_primary, degraded)

    async def renew_leases(
        self, owner: str, run_ids: Sequence[str], until: datetime
    ) -> list[RunRecord]:
        """Extend the leases `owner` holds; runs in flight since before an outage keep theirs."""

        async def on_primary(registry: Registry) -> list[RunRecord]:
            held = await registry.renew_leases(owner, run_ids, until)
            kept = {r.run_id for r in held}
            for run_id in run_ids:
                if run_id not in kept:
                    self._executing.pop(run_id, None)
            self._seen(held)
            return held

        async def degraded() -> list[RunRecord]:
            held = await self._local("renewing leases").renew_leases(owner, run_ids, until)
            for thread_id in {r.thread_id for r in held}:
                self._copy_thread(thread_id)
            kept = {r.run_id for r in held}
            for run_id in run_ids:
                if run_id in kept:
                    continue
                adopted = self._adopt(run_id, lease_expires_at=until)
                if adopted is not None and adopted.lease_owner == owner:
                    held.append(adopted)
                    self._journal(ChangeRun(run_id, adopted.thread_id, {"lease_expires_at": until}))
            return held

        return await self._write(on_primary, degraded)

    async def release_runs(self, owner: str, run_ids: Sequence[str]) -> None:
        """Give up leases so another executor may claim the runs at once."""

        async def on_primary(registry: Registry) -> None:
            for run_id in run_ids:
                self._executing.pop(run_id, None)
            await registry.release_runs(owner, run_ids)

        async def degraded() -> None:
            await self._local("releasing runs").release_runs(owner, run_ids)
            released = {"lease_owner": None, "lease_expires_at": None}
            for run_id in run_ids:
                adopted = self._adopt(run_id, **released)
                self._executing.pop(run_id, None)
                if adopted is not None:
                    self._journal(ChangeRun(run_id, adopted.thread_id, released))
                elif (record := await self._local("releasing runs").get_run(run_id)) is not None:
                    self._copy_thread(record.thread_id)

        await self._write(on_primary, degraded)

    async def request_cancel(self, run_id: str) -> RunRecord | None:
        """Flag the run for cancellation; returns it."""

        async def degraded() -> RunRecord | None:
            record = await self._local("cancelling this run").request_cancel(run_id)
            if record is not None:
                self._copy_thread(record.thread_id)
                return record
            adopted = self._adopt(run_id, cancel_requested=True)
            if adopted is None:
                raise self.router.unavailable("cancelling this run")
            self._journal(ChangeRun(run_id, adopted.thread_id, {"cancel_requested": True}))
            return adopted

        return await self._write(lambda r: r.request_cancel(run_id), degraded)

    async def claim_cancelled(
        self, owner: str, *, now: datetime, until: datetime
    ) -> list[RunRecord]:
        """Lease the unfinished runs flagged for cancellation that no live executor holds."""

        async def degraded() -> list[RunRecord]:
            claimed = await self._local("claiming runs").claim_cancelled(
                owner, now=now, until=until
            )
            for thread_id in {r.thread_id for r in claimed}:
                self._copy_thread(thread_id)
            return claimed

        lapsed_by = self.router.lease_clock(now, until - now)
        return await self._write(
            lambda r: r.claim_cancelled(owner, now=lapsed_by, until=until), degraded
        )

    # ---------------------------------------------------------------- events
    async def store_events(self, events: Sequence[EventRecord]) -> None:
        """Store events of any runs in one transaction."""

        async def degraded() -> None:
            await self._local("storing events").store_events(events)
            for event in {e.run_id: e for e in events}.values():
                if self.router.is_local(event.thread_id):
                    self._copy_thread(event.thread_id)
                else:
                    self._journal(
                        CopyEvents(event.run_id, event.thread_id, self.router.copied_seqs)
                    )

        await self._write(lambda r: r.store_events(events), degraded)

    async def put_events(self, events: Sequence[EventRecord]) -> None:
        """Store events, skipping those stored already (primary only)."""

        async def degraded() -> None:
            raise self.router.unavailable("copying events")

        await self._write(lambda r: r.put_events(events), degraded)

    async def list_events(
        self, run_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[EventRecord]:
        """Events with seq > after_seq, in order (during an outage: when the fallback has
        every one of them)."""

        async def degraded() -> list[EventRecord]:
            local = self._local("reading events")
            if await local.get_run(run_id) is None:
                # A run from before the outage: the fallback has its newest events only.
                first = await local.list_events(run_id, limit=1)
                if not first or first[0].seq > after_seq + 1:
                    raise self.router.unavailable("reading this run's events")
            return await local.list_events(run_id, after_seq=after_seq, limit=limit)

        return await self._route(
            lambda r: r.list_events(run_id, after_seq=after_seq, limit=limit), degraded
        )

    async def last_seq(self, run_id: str) -> int:
        """The highest seq stored for the run (0 when none)."""

        async def degraded() -> int:
            local = self._local("reading events")
            if await local.get_run(run_id) is None:
                raise self.router.unavailable("reading this run's events")
            return await local.last_seq(run_id)

        return await self._route(lambda r: r.last_seq(run_id), degraded)
