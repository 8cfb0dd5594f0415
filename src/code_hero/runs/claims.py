"""Where runs execute: claims from the registry, leases kept alive, cancels that find their run.

Every executor sharing the database claims runs from the runs table when it
has a free slot (PostgreSQL: `FOR UPDATE SKIP LOCKED`), oldest first, and
only the oldest unfinished run of a thread, so runs of one thread execute one
at a time in the order they were asked for, across replicas.

The claimer holds a lease on each run and renews it while the run executes;
when a lease lapses (its process died or froze) another executor claims the
run and resumes it. A cancel reaches the executor that runs the run: at once
here, by a "cancel RUN_ID" message elsewhere, and at the next lease renewal
when the message is lost. A run nobody holds is flagged and finished by
whichever claimer comes next.

A run started here while this executor has a free slot skips the claim: it is
admitted leased here already (unless its thread has an older unfinished run)
and launched at once (`admitting`, `admitted`). The slots a claim pass counted
free are kept from such starts until it has launched what it claimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from code_hero.errors import NotFoundError
from code_hero.persistence import clock
from code_hero.persistence.records import Registry, RunRecord, RunStatus
from code_hero.runs.bus import POKE, EventBus
from code_hero.runs.repeats import Repeats

__all__ = ["Claims", "Executing"]

log = logging.getLogger(__name__)


class Executing(Protocol):
    """What the claims ask of the executor that runs what they claim."""

    @property
    def active_runs(self) -> int: ...
    def is_active(self, run_id: str) -> bool: ...
    def is_ending(self, run_id: str) -> bool: ...
    def running(self) -> list[str]: ...
    def launch(self, record: RunRecord, *, resuming: bool) -> None: ...
    def stop(self, run_id: str, *, lost: bool = False) -> None: ...
    async def finish_cancelled(self, record: RunRecord) -> None: ...
    async def wait(self, run_id: str, limit: float | None = None) -> RunRecord: ...


class Claims:
    """The claim loop, the lease renewal and cancels, for one executor."""

    def __init__(
        self,
        runs: Executing,
        registry: Callable[[], Registry],
        bus: EventBus,
        graph_names: Callable[[], list[str]],
        *,
        max_concurrent: int = 8,
        lease_seconds: float = 15.0,
        poll_interval: float | None = None,
        claim_others: bool = True,
    ) -> None:
        self.runs = runs
        self._registry = registry
        self.bus = bus
        self.graph_names = graph_names
        self.owner = f"executor-{uuid.uuid4().hex[:12]}"
        self.lease = timedelta(seconds=lease_seconds)
        self.max_concurrent = max_concurrent
        self.poll_interval = poll_interval or max(lease_seconds / 3, 0.05)
        # False (the CLI's one-shot runs): claim only the runs this executor started,
        # kept in `started` until they are claimed here or have ended elsewhere.
        self.claim_others = claim_others
        self.started: set[str] = set()
        self.closing = False
        self._wake = asyncio.Event()
        # A claim pass looks for cancelled unclaimed runs only when one may be there (a
        # cancel asked here or heard of, a poll tick, a failed pass): a new run's wake
        # costs one query, not two. Full: the last pass used every free slot, so a slot
        # freed is worth a pass at once.
        self._cancels_due = True
        self._claim_failures = Repeats(log, "claiming runs")
        self._full = False
        # Runs heard of as queued for a claim since the last pass looked (admitted here
        # for a pass, or "runs" from another executor): news that a run waits, which a
        # pass takes as such without asking the registry whether one does.
        self._queued = 0
        # Slots kept for runs being admitted leased here (`admitting`): not claimed for.
        self._admitting = 0
        # Slots a claim pass counted free, kept while it claims and until it has launched
        # what it claimed: no start admitted leased meanwhile takes one of them.
        self._reserved = 0
        # Held while claiming. A cancel, or a thread's runs stopped, takes no lock (a
        # pass makes database round trips: a run may end meanwhile); its run (thread)
        # is in `_stopping` (`_stopping_threads`) until it returns, and a pass stops a
        # run it claims that is there.
        self._claiming = asyncio.Lock()
        # Counted: two stops of one thread (the sweep and a user's deletion) overlap,
        # and the first to return must not unmark it for the second.
        self._stopping: Counter[str] = Counter()
        self._stopping_threads: Counter[str] = Counter()
        self._loops: list[asyncio.Task[None]] = []
        # When the lease of each run executing here lapses, as its claim or last
        # renewal set it: an end recorded well within it needs no look at the row.
        self._expires: dict[str, datetime] = {}
        # Told when the next pass to begin has ended (`after_next_pass`): passes begun,
        # and the callbacks with the pass number each waits for.
        self._passes = 0
        self._after_pass: list[tuple[int, Callable[[], None]]] = []

    @property
    def registry(self) -> Registry:
        return self._registry()

    def open(self) -> None:
        """Listen for wake-ups and cancels; start claiming and renewing."""
        self.bus.on_control(self._on_control)
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="run-claims"),
            asyncio.create_task(self._renew_leases(), name="run-leases"),
        ]

    def stop_claiming(self) -> None:
        """Claim nothing more (the leases of running runs are still renewed)."""
        self.closing = True
        self._wake.set()
        self._tell_all()

    async def close(self) -> None:
        """Stop the claim loop and the lease renewal."""
        # Forgotten first: a loop ends at its next turn even if an await drops the
        # cancel (Python 3.11's wait_for, in psycopg_pool's getconn).
        loops, self._loops = self._loops, []
        for loop in loops:
            loop.cancel()
        for loop in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    def _looping(self) -> bool:
        """Whether the calling loop is still one of this executor's (`close` forgets them)."""
        return asyncio.current_task() in self._loops

    def wake(self) -> None:
        """Try to claim now (a run was started, a slot or a thread was freed)."""
        self._wake.set()

    def runs_admitted(self) -> str:
        """Claim now: a run was admitted here for a claim pass. The control message
        that tells the other executors (this one's echo of it wakes nothing more)."""
        self._queued += 1
        self._wake.set()
        return f"runs {self.owner}"

    def slot_freed(self) -> None:
        """A run ended here: claim now if the last pass left runs for want of a slot."""
        if self._full:
            self._wake.set()

    def admitting(self) -> datetime | None:
        """Keep a slot for a run about to be admitted here: the end of the lease it is
        admitted under, or None (no free slot, runs queued for one, or claiming stopped:
        admitted unleased, for a claim pass). Each slot kept is given back by `admitted`
        or `not_admitted`."""
        # Full: the last pass left runs waiting for want of a slot. A slot freed since is
        # theirs, in order, through a claim: a new run taking it could starve them.
        if self.closing or self._full or self._free() <= 0:
            return None
        self._admitting += 1
        return clock.now() + self.lease

    def not_admitted(self) -> None:
        """Give back the slot kept for a run whose admission failed."""
        self._admitting -= 1

    def admitted(self, record: RunRecord) -> bool:
        """Launch a run admitted leased here (the slot kept for it given back, as
        `not_admitted` does), as a claim pass launches one it claimed; False when
        claiming stopped meanwhile or the slot went after all: the caller releases its
        lease, and the run waits for a claim (so too when half its lease or less is left:
        see below)."""
        self._admitting -= 1
        expires = record.lease_expires_at
        # A lease that lapsed as the admission waited (a busy pool) may be another's; one
        # nearly lapsed would be renewed only at the next renewal tick, and another
        # executor could claim the run meanwhile: a claim leases it afresh.
        if (
            self.closing
            or self._free() <= 0
            or expires is None
            or expires - clock.now() <= self.lease / 2
        ):
            return False
        self._expires[record.run_id] = expires
        self.runs.launch(record, resuming=False)
        if record.run_id in self._stopping or record.thread_id in self._stopping_threads:
            self.runs.stop(record.run_id)  # its cancel was asked as it was admitted
        return True

    def _free(self) -> int:
        """Slots no run executing here, being admitted leased here, nor being claimed
        for by a pass takes."""
        return self.max_concurrent - self.runs.active_runs - self._admitting - self._reserved

    def after_next_pass(self, tell: Callable[[], None]) -> None:
        """Call `tell` once a claim pass that begins after now has ended (claimed or not,
        failed or not): a run admitted before this call was looked for by then. Once
        claiming has stopped no pass will come: `tell` is called at once."""
        if self.closing:
            tell()
            return
        self._after_pass.append((self._passes + 1, tell))

    def _tell_all(self) -> None:
        """No pass will end any more (claiming stopped): tell every caller waiting for one."""
        due, self._after_pass = [tell for _, tell in self._after_pass], []
        for tell in due:
            tell()

    def _pass_ended(self, number: int) -> None:
        due = [tell for after, tell in self._after_pass if after <= number]
        if due:
            self._after_pass = [(a, t) for a, t in self._after_pass if a > number]
            for tell in due:
                tell()

    def _wake_for_cancels(self) -> None:
        self._cancels_due = True
        self._wake.set()

    def _on_control(self, message: str) -> None:
        kind, _, run_id = message.partition(" ")
        if kind == "runs":
            # "runs OWNER": a run admitted by that executor, which woke its own claim
            # loop already (`runs_admitted`): its echo here is no news. A bare "runs"
            # (a freed thread, an earlier version) wakes every claimer.
            if run_id != self.owner:
                self._queued += 1
                self._wake.set()
            return
        if kind == POKE:  # an outage's writes are in: runs that waited for them claimable
            self._wake.set()
        self._cancels_due = True  # a cancel (or a poke after an outage) may have flagged one
        if kind == "cancel" and self.runs.is_active(run_id):
            self.runs.stop(run_id)

    # ---------------------------------------------------------------- cancel
    async def cancel(self, run_id: str) -> RunRecord:
        """Stop a run promptly, wherever it runs, and record CANCELLED (a finished run
        is returned as it is)."""
        record = await self.registry.get_run(run_id)
        if record is None:
            raise NotFoundError(f"no run {run_id!r}")
        if record.status.finished:
            return record
        self._stopping[run_id] += 1  # a pass that claims it meanwhile stops it
        try:
            if not self.runs.is_active(run_id):
                # Flagged, a run is never claimed again; one claimed elsewhere is
                # stopped by the message or at its lease renewal.
                await self.registry.request_cancel(run_id)
            if self.runs.is_active(run_id):
                self.runs.stop(run_id)
                return await self.runs.wait(run_id, limit=5)
            await self.bus.send_control(f"cancel {run_id}")
            self._wake_for_cancels()  # an unclaimed run is finished by the claim loop
            return await self.runs.wait(run_id, limit=5 + self.lease.total_seconds())
        finally:
            _unmark(self._stopping, run_id)

    async def stop_thread(self, thread_id: str) -> None:
        """Cancel every unfinished run of the thread, wherever it runs, and wait until
        none executes (a deletion follows: nothing may write after it) and each has its
        end recorded, CANCELLED as a cancel records it: a follower sees that end before
        the deletion takes the run's events, not a stream stopped short of it."""
        executing: list[str] = []
        remote: list[str] = []
        unclaimed: list[str] = []  # ended CANCELLED by a claim loop, here or elsewhere
        flagged_any = False
        # No lock, as for a cancel: a pass that claims a run of the thread meanwhile
        # (leased before its flag) stops it before its first step.
        self._stopping_threads[thread_id] += 1
        try:
            for record in await self.registry.unfinished_runs(thread_id):
                if not self.runs.is_active(record.run_id):
                    # Flagged, a run is never claimed again; one claimed already (leased)
                    # is stopped by its executor, on the message or at its lease renewal.
                    flagged = await self.registry.request_cancel(record.run_id)
                    flagged_any = True
                    if not self.runs.is_active(record.run_id):  # else claimed here meanwhile
                        if flagged and not flagged.status.finished:
                            (remote if flagged.lease_owner else unclaimed).append(record.run_id)
                        continue
                self.runs.stop(record.run_id)
                executing.append(record.run_id)
            for run_id in remote:
                await self.bus.send_control(f"cancel {run_id}")
            if (unclaimed or remote) and not (self.claim_others and not self.closing):
                # No claim loop here ends them (a one-shot CLI gateway claims only its own
                # runs; a closing one claims nothing), and none elsewhere may be up: the
                # deletion ends them itself rather than wait a lease for nobody. A run
                # held elsewhere is ended too once its lease lapsed (a crashed replica's).
                try:
                    await self._end_cancelled(clock.now())
                except Exception as exc:  # a passing error: wait for a claim loop as before
                    log.warning("could not end the cancelled runs of thread %s: %s", thread_id, exc)
            elif flagged_any:  # the flagged runs nobody holds are finished by a claim loop
                self._wake_for_cancels()  # (not woken for nothing: a pass is two UPDATEs)
            await asyncio.gather(
                *(self.runs.wait(run_id, limit=5) for run_id in executing),
                *(
                    self.runs.wait(run_id, limit=5 + self.lease.total_seconds())
                    for run_id in remote + unclaimed
                ),
            )
        finally:
            _unmark(self._stopping_threads, thread_id)

    # ---------------------------------------------------------------- claiming
    async def _claim_loop(self) -> None:
        while self._looping():
            try:
                async with asyncio.timeout(self.poll_interval):  # not wait_for: see `close`
                    await self._wake.wait()
            except TimeoutError:
                self._cancels_due = True
            self._wake.clear()
            if self.closing or not self._looping():
                return
            cancels, self._cancels_due = self._cancels_due, False
            try:
                await self.claim_once(cancels=cancels)
            except Exception as exc:
                self._cancels_due = self._cancels_due or cancels
                self._claim_failures.failed(exc)
                await asyncio.sleep(self.poll_interval)
            else:
                self._claim_failures.succeeded()

    async def claim_once(self, *, cancels: bool = True) -> None:
        """Claim what can be claimed now (runs whose lease lapsed included); `cancels`:
        and finish the cancelled runs nobody holds."""
        async with self._claiming:
            self._passes += 1
            number = self._passes
            try:
                await self._claim_locked(cancels)
            finally:
                self._pass_ended(number)

    async def _claim_locked(self, cancels: bool) -> None:
        now = clock.now()
        if self.claim_others and cancels:  # cancels asked for runs no executor holds end here
            await self._end_cancelled(now)
        free = self._free()
        if free <= 0 or not (self.claim_others or self.started) or self.closing:
            # No slot: a run waiting for one is claimed by a pass once a slot frees (not
            # taken by a start's fast path meanwhile), if one waits. (Full until the look
            # answers: so too when it fails.)
            self._full = free <= 0 and not self.closing
            if self._full:
                self._full = await self._waiting(now, 0)
            if self.started:
                await self._forget_ended_elsewhere()
            return
        heard, self._queued = self._queued, 0  # this pass looks for those
        # Kept from a start's fast path (`admitting`) until what is claimed is launched.
        self._reserved += free
        try:
            claimed = await self._claim_into(now, free)
        finally:
            self._reserved -= free
        # Every slot taken: runs may wait still. (Fewer claimed than free: none waited
        # when the pass looked, but those heard of since.)
        if claimed >= free:
            self._full = True
            self._full = await self._waiting(clock.now(), heard - claimed)
        else:
            self._full = self._queued > 0
        if self.started:  # the rest are queued, held elsewhere, or ended elsewhere
            await self._forget_ended_elsewhere()

    async def _waiting(self, now: datetime, heard: int) -> bool:
        """Whether a run waits for a slot here: news of one (`heard` more than a pass
        claimed, or heard since), or, with none, the registry's answer. A pass that
        takes every slot would otherwise leave each new start to the next pass, which
        takes every slot again: runs queued one by one for claims while none waited
        (a timer's pass when all slots are busy began such a chain: issue 15)."""
        if heard > 0 or self._queued > 0:
            return True
        if not (self.claim_others or self.started):
            return False
        return await self.registry.has_claimable(
            now=now,
            until=now + self.lease,
            graphs=self.graph_names(),
            run_ids=None if self.claim_others else sorted(self.started),
        )

    async def _claim_into(self, now: datetime, free: int) -> int:
        """Claim up to `free` runs (their slots reserved) and launch them; how many."""
        claimed = await self.registry.claim_runs(
            self.owner,
            now=now,
            until=now + self.lease,
            limit=free,
            # A run of a graph this process lacks waits for a process that has it.
            graphs=self.graph_names(),
            run_ids=None if self.claim_others else sorted(self.started),
        )
        if claimed and self.closing:
            # Shutdown began while the pass waited for the database: a run launched now
            # is not in its drain (nor renewed after it); another executor takes it.
            await self._hand_back(claimed)
            return len(claimed)
        for record in claimed:
            self.started.discard(record.run_id)
            self._expires[record.run_id] = now + self.lease
            if self.runs.is_active(record.run_id):  # its lease was renewed, not lost: one task
                continue
            resuming = record.status is RunStatus.RUNNING
            if resuming:
                log.info("resuming run %s of thread %s", record.run_id, record.thread_id)
            self.runs.launch(record, resuming=resuming)
            if record.run_id in self._stopping or record.thread_id in self._stopping_threads:
                self.runs.stop(record.run_id)  # its cancel was asked as it was claimed
        return len(claimed)

    async def _end_cancelled(self, now: datetime) -> None:
        """End CANCELLED, terminal event and all, the flagged runs no executor holds."""
        for record in await self.registry.claim_cancelled(
            self.owner, now=now, until=now + self.lease
        ):
            await self.runs.finish_cancelled(record)

    async def _hand_back(self, claimed: list[RunRecord]) -> None:
        """Runs claimed as shutdown began: a cancelled one ends here, CANCELLED (its
        cancel waits for that); the others' leases are given back, at once claimable.
        A run still executing here (its lease renewed by the claim) is the drain's."""
        release: list[str] = []
        for record in claimed:
            self.started.discard(record.run_id)
            if self.runs.is_active(record.run_id):
                continue
            if record.run_id in self._stopping or record.thread_id in self._stopping_threads:
                await self.runs.finish_cancelled(record)
            else:
                release.append(record.run_id)
        if not release:
            return
        try:
            await self.registry.release_runs(self.owner, release)
        except Exception as exc:  # their leases lapse instead
            log.warning("releasing runs claimed at shutdown failed: %s", exc)

    async def _forget_ended_elsewhere(self) -> None:
        """Drop the runs started here that ended unclaimed (cancelled, or run elsewhere)."""
        waiting = sorted(self.started)
        try:
            found = await self.registry.get_runs(waiting)
        except Exception as exc:  # asked again on the next claim
            log.debug("looking up runs started here failed: %s", exc)
            return
        for run_id in waiting:
            record = found.get(run_id)
            if record is None or record.status.finished:
                self.started.discard(run_id)

    # ---------------------------------------------------------------- leases
    async def still_held(self, run_id: str) -> bool:
        """Whether this executor holds the run's lease still (renewed now unless half of
        it is left): a process that stalled past it may find the run taken over."""
        now = clock.now()
        expires = self._expires.get(run_id)
        if expires is not None and expires - now > self.lease / 2:
            return True
        until = now + self.lease
        try:
            held = await self.registry.renew_leases(self.owner, [run_id], until)
        except Exception as exc:  # (a busy pool): the end's own lease check decides
            log.warning("checking the lease of run %s failed: %s", run_id, exc)
            return True
        if held and run_id in self._expires:
            self._expires[run_id] = until
        return bool(held)

    @property
    def leases_known(self) -> int:
        """How many runs' lease expiries are kept (those executing here)."""
        return len(self._expires)

    def forget(self, run_id: str) -> None:
        """The run executes here no longer."""
        self.started.discard(run_id)
        self._expires.pop(run_id, None)

    async def _renew_leases(self) -> None:
        interval = max(self.lease.total_seconds() / 3, 0.05)
        while self._looping():
            await asyncio.sleep(interval)
            mine = self.runs.running()
            if not mine:
                continue
            until = clock.now() + self.lease
            try:
                held = await self.registry.renew_leases(self.owner, mine, until)
            except Exception as exc:
                log.warning("renewing run leases failed: %s", exc)
                continue
            held_ids = {r.run_id for r in held}
            for run_id in held_ids & self._expires.keys():  # (not one that ended meanwhile)
                self._expires[run_id] = until
            for run_id in mine:
                # A run whose end was committed meanwhile is not held (its row says it
                # ended) but not lost either: its task is recording that end.
                if (
                    run_id not in held_ids
                    and self.runs.is_active(run_id)
                    and not self.runs.is_ending(run_id)
                ):
                    log.warning("lost the lease of run %s: another executor has it", run_id)
                    self.runs.stop(run_id, lost=True)
            for record in held:
                if record.cancel_requested:
                    self.runs.stop(record.run_id)


def _unmark(marks: Counter[str], key: str) -> None:
    """One stop of `key` ended: forget it when it was the last."""
    marks[key] -= 1
    if marks[key] <= 0:
        del marks[key]
