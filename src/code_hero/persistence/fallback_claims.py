"""Admitting, claiming, leasing, finishing and cancelling runs through an outage.

During an outage a run is admitted only on a new thread or one born in the
outage (its rows live in the fallback, and each change journals a copy of the
thread); a run in flight since before the outage goes on from the copy this
process holds, each change journalled for the primary, unless its lease
lapsed before the outage began (`RoutedRegistry._lapsed_before_outage`): then
it is held for the outage. Leases that lapsed during an outage count as lapsed
only later (`FallbackRouter.lease_clock`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from code_hero.persistence import clock
from code_hero.persistence.entries import ChangeRun, FinishRun, ReleaseRun
from code_hero.persistence.fallback_routing import RoutedRegistry
from code_hero.persistence.records import (
    EventRecord,
    Registry,
    RunRecord,
    RunStatus,
    ThreadStatus,
)
from code_hero.persistence.recovery import forget_if_deleted
from code_hero.persistence.registry.edits import being_deleted

__all__ = ["FallbackClaims"]


class FallbackClaims(RoutedRegistry):
    """Admitting, leasing, finishing and cancelling runs (part of `FallbackRegistry`)."""

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
            # A kept thread another replica deleted: the run starts from nothing.
            await forget_if_deleted(self.router, run.thread_id)
            if await self.router.mark_still_waits(run.thread_id, registry):
                # Its deletion's mark is on the fallback's row only, for now: refused as
                # the marked row would refuse it (the deletion's last step ends it).
                raise being_deleted(run.thread_id)
            admitted = await registry.admit_run(
                run,
                reject_if_busy=reject_if_busy,
                events=events,
                owner=owner,
                new_thread=new_thread,
            )
            self._seen_leased(admitted[0])
            return admitted

        async def degraded() -> tuple[RunRecord | None, str | None]:
            if not new_thread and not self.router.is_local(run.thread_id):
                raise self.router.unavailable("starting a run on this thread")
            self._room()
            admitted = await self._local("starting a run").admit_run(
                run,
                reject_if_busy=reject_if_busy,
                events=events,
                owner=owner,
                new_thread=new_thread,
            )
            self.router.note_local(run.thread_id)
            if admitted[0] is not None:
                if self._seen_leased(admitted[0]):
                    self._held.add(run.run_id)  # as a claim through the fallback
                self._copy_thread(run.thread_id)
            return admitted

        return await self._write(on_primary, degraded)

    def _seen_leased(self, record: RunRecord | None) -> bool:
        """A run admitted leased (claimed by its executor as it was admitted) is known
        as a claimed one is (`claim_runs`): whether it was."""
        if record is None or record.lease_owner is None:
            return False
        self._seen([record], claimed_by=record.lease_owner)
        return True

    async def finish_run(
        self,
        run_id: str,
        thread_status: ThreadStatus,
        *,
        if_unfinished: bool = False,
        if_leased_by: str | None = None,
        if_as_copied: bool = False,
        events: Sequence[EventRecord] = (),
        **fields: Any,
    ) -> tuple[RunRecord | None, bool]:
        """End a run and set its thread's status, with its last events, in one
        transaction (during an outage, of a run from before it: journalled as one, whose
        end goes in ERROR if the copy-back refused a checkpoint of it that nothing newer
        supersedes, `FinishRun`). On the primary the end is recorded as given: the
        executor has asked `FallbackRouter.refused_end` before it told anyone.
        """

        async def finish(registry: Registry) -> tuple[RunRecord | None, bool]:
            return await registry.finish_run(
                run_id,
                thread_status,
                if_unfinished=if_unfinished,
                if_leased_by=if_leased_by,
                if_as_copied=if_as_copied,
                events=events,
                **fields,
            )

        async def degraded() -> tuple[RunRecord | None, bool]:
            record, waiting = await finish(self._local("finishing this run"))
            if record is not None:
                self._copy_thread(record.thread_id)
                return record, waiting
            if self._gone(run_id):  # its thread was deleted meanwhile
                return None, False
            known = self._known(run_id)
            if known is None:
                raise self.router.unavailable("finishing this run")
            if if_leased_by is not None and (
                known.lease_owner != if_leased_by or self._lapsed_before_outage(known)
            ):
                # Released or taken over, as far as this process knows, or maybe taken
                # over before the outage: its end is not ours to record; a cancel asked
                # here goes on to whoever holds it.
                if fields.get("status") == RunStatus.CANCELLED:
                    self._journal(ChangeRun(run_id, known.thread_id, {"cancel_requested": True}))
                return None, False
            # The lease it ran under, not the one its end clears (`lease_owner=None`).
            owner = self._owner(run_id, "finishing this run")
            adopted = self._adopt(run_id, **fields)
            # Its last events go with the end, not to the fallback: there a copy
            # (`CopyEvents`) would take them to the primary whether the end applies or not.
            # Its readers find them in memory meanwhile (`list_events`): its writer is gone.
            last = tuple(events)
            refused = self.router.journal.refused_runs
            self._journal(
                FinishRun(run_id, known.thread_id, dict(fields), owner, last, refused=refused)
            )
            if last:
                self._ended[run_id] = last
            if fields.get("status") == RunStatus.CANCELLED:
                # A cancel asked here, of a run executing here, is not flagged on its
                # row (Claims.cancel stops it at once): the flag goes after its end, so
                # a replica that took the run over meanwhile (the end then applies not)
                # stops it at its next renewal, or one that released it lets
                # claim_cancelled end it. After, not before: flagged with a lapsed
                # lease, the run could be claimed cancelled between the two.
                self._journal(ChangeRun(run_id, known.thread_id, {"cancel_requested": True}))
            # Runs queued on the thread are in the primary: claimed once it is back.
            return adopted, False

        # Ended, or its end could not be recorded anywhere: this process holds the run
        # no longer either way (its lease lapses and another executor resumes it).
        owner = self._claimed_by.get(run_id)
        try:
            ended = await self._write(finish, degraded)
        except BaseException:
            self._drop(run_id)
            if owner is not None and len(events) > 1:
                # Its writer stores the events before its last one now, under the lease
                # it held (`_store_events_locally`): journalled with none, they would be
                # copied whoever holds the run then, or not at all (an adopted run's).
                self._unended[run_id] = owner
            raise
        self._drop(run_id)
        return ended

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
            start = clock.now()
            claimed = await registry.claim_runs(
                owner,
                now=min(lapsed_by, start),
                until=start + lease,
                limit=limit,
                graphs=graphs,
                run_ids=run_ids,
            )
            self._seen(claimed, claimed_by=owner)
            return claimed

        async def on_primary(registry: Registry) -> list[RunRecord]:
            return await claim(registry, self.router.lease_clock(now, lease))

        async def degraded() -> list[RunRecord]:
            claimed = await claim(self._local("claiming runs"), clock.now())
            self._held.update(r.run_id for r in claimed)
            for thread_id in {r.thread_id for r in claimed}:
                self._copy_thread(thread_id)
            return claimed

        return await self._write(on_primary, degraded)

    async def has_claimable(
        self,
        *,
        now: datetime,
        until: datetime,
        graphs: Sequence[str] | None = None,
        run_ids: Sequence[str] | None = None,
    ) -> bool:
        """Whether `claim_runs` would find a run, its leases judged as it judges them."""

        async def on_primary(registry: Registry) -> bool:
            lapsed_by = self.router.lease_clock(now, until - now)
            return await registry.has_claimable(
                now=lapsed_by, until=until, graphs=graphs, run_ids=run_ids
            )

        async def degraded() -> bool:
            return await self._local("claiming runs").has_claimable(
                now=clock.now(), until=until, graphs=graphs, run_ids=run_ids
            )

        return await self._route(on_primary, degraded)

    async def renew_leases(
        self, owner: str, run_ids: Sequence[str], until: datetime
    ) -> list[RunRecord]:
        """Extend the leases `owner` holds; runs in flight since before an outage keep theirs
        (not those whose lease lapsed before it began: `_lapsed_before_outage`)."""

        async def on_primary(registry: Registry) -> list[RunRecord]:
            held = await registry.renew_leases(owner, run_ids, until)
            kept = {r.run_id for r in held}
            for run_id in run_ids:
                if run_id not in kept:
                    self._drop(run_id)
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
                known = self._known(run_id)
                if known is not None and (
                    known.lease_owner != owner or self._lapsed_before_outage(known)
                ):
                    self._lose(run_id, known)  # as the primary answers a lease not held
                    continue
                adopted = self._adopt(run_id, lease_expires_at=until)
                if adopted is not None:
                    held.append(adopted)
                    self._journal(
                        ChangeRun(run_id, adopted.thread_id, {"lease_expires_at": until}, owner)
                    )
            return held

        return await self._write(on_primary, degraded)

    async def release_runs(self, owner: str, run_ids: Sequence[str]) -> None:
        """Give up leases so another executor may claim the runs at once."""

        async def on_primary(registry: Registry) -> None:
            for run_id in run_ids:
                self._drop(run_id)
            await registry.release_runs(owner, run_ids)

        async def degraded() -> None:
            await self._local("releasing runs").release_runs(owner, run_ids)
            for run_id in run_ids:
                adopted = self._adopt(run_id, lease_owner=None, lease_expires_at=None)
                self._drop(run_id)
                if adopted is not None:
                    self._journal(ReleaseRun(run_id, adopted.thread_id, owner))
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
            if self._gone(run_id):
                return None
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
