"""The registry's calls routed to the primary or, during an outage, to the fallback.

`RoutedRegistry` is the base of `FallbackRegistry`: it tries the primary's
registry while it serves, fails the router over when the primary cannot be
reached, and otherwise answers from the active fallback or refuses with
UNAVAILABLE. It also keeps, in memory, the runs this process executes as it
last saw them, so a run in flight when an outage begins goes on (`_adopt`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from code_hero.persistence.entries import CopyThread, Entry
from code_hero.persistence.fallback import FallbackRouter, to_its_end
from code_hero.persistence.records import EventRecord, Registry, RunRecord, changed_run

__all__ = ["RoutedRegistry"]

T = TypeVar("T")


class RoutedRegistry:
    """Routing of registry calls through an outage, and the runs in flight held here."""

    def __init__(self, router: FallbackRouter) -> None:
        self.router = router
        # Runs this process executes, as last seen: what a run in flight at the start
        # of an outage goes on from. Bounded by the runs executing here.
        self._executing: dict[str, RunRecord] = {}
        # The executor that claimed each of them: what its changes and end during an
        # outage are journalled under. Not the row last seen: it may name a replica
        # that took the run over since (or no one), and a replayed end would then
        # apply to that replica's run, or with no lease check at all.
        self._claimed_by: dict[str, str] = {}
        # Those of them changed during the outage (the primary has an older row).
        self._adopted: dict[str, RunRecord] = {}
        # Those of them claimed through a fallback: rows it held (their thread born in
        # an outage), not PostgreSQL's alone, as a run admitted on a thread kept local
        # after a recovery (a quarantined entry) is.
        self._held: set[str] = set()
        # The last events of those of them ended here during the outage (journalled
        # with the end, `FinishRun`, not stored in the fallback: see `finish_run`):
        # what its readers need until the recovery replays the end. Not kept for an end
        # the primary refused (quarantined): it serves the reads then, and has the run
        # unfinished, which its next claimer resumes numbering its events after the
        # primary's last, these seqs among them (followers past them would skip those).
        self._ended: dict[str, tuple[EventRecord, ...]] = {}
        # The executor that held each of them whose end failed here, until the events it
        # stores after (its writer's, `RunExecutor._not_ended`) are: those journalled in
        # an outage are copied only while it holds the run still (`CopyEvents.owner`).
        self._unended: dict[str, str] = {}
        router.on_recovered.append(self._adopted.clear)
        router.on_recovered.append(self._ended.clear)
        # Journalled entries name their owner already; after it the events go to the
        # primary (an end that failed and whose events were never stored leaves one).
        router.on_recovered.append(self._unended.clear)

    def internal_sizes(self) -> dict[str, int]:
        """Entries in the per-run maps (executing, held: runs run here; adopted, ended:
        until recovery)."""
        return {
            "registry.executing": len(self._executing),
            "registry.claimed_by": len(self._claimed_by),
            "registry.adopted": len(self._adopted),
            "registry.held": len(self._held),
            "registry.ended": len(self._ended),
            "registry.unended": len(self._unended),
        }

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
                result = await on_primary(registry)
            except Exception as exc:
                if not await self.router.fail_if_down(self.router.primary, exc):
                    raise
            else:
                self.router.primary.answered()
                return result
        return await degraded()

    async def _write(
        self,
        on_primary: Callable[[Registry], Awaitable[T]],
        degraded: Callable[[], Awaitable[T]],
    ) -> T:
        async with self.router.gate.write():
            return await self._route(on_primary, lambda: _stored_to_its_end(degraded))

    def _journal(self, entry: Entry) -> None:
        self.router.journal.append(entry)

    def _copy_thread(self, thread_id: str) -> None:
        journal = self.router.journal
        self._journal(
            CopyThread(
                thread_id,
                self.router.copied_seqs,
                refused=journal.refused_runs,
                leased=journal.leased_runs,
            )
        )

    def _room(self) -> None:
        self.router.journal.ensure_room(self.router.retry_after)

    def _known(self, run_id: str) -> RunRecord | None:
        """A run in flight since before the outage, as this process holds it."""
        known = self._adopted.get(run_id) or self._executing.get(run_id)
        return None if known is None or self._gone(run_id) else known

    def _lapsed_before_outage(self, known: RunRecord) -> bool:
        """Whether the lease of a run in flight, as this process last saw it, may have
        lapsed before the outage (this process stalled past it). Another replica may
        have taken the run over while the primary still served, and the copy here
        cannot tell: it names this process still. So the run is not this process's to
        renew or end in the outage (an end journalled here would be told its waiters,
        then refused at replay under the other's lease): it is held for the outage, and
        whoever holds it once the primary is back goes on with it (the replica that
        took it, or the next claimer, by `lease_clock`).

        Lapsed before the outage: before the primary's last answer, or in a stall of
        this process (its loop did not run: SIGSTOP, a long collection) that began
        before it found the primary unreachable; no answer came in the stall, so the
        primary's last answer may lie before it. A lease that lapsed while the loop ran
        and the primary did not answer lapsed because the outage failed its renewals:
        it stays this process's, and `lease_clock` keeps replicas that saw the outage
        from taking it until this one has had time to sync."""
        began = self.router.outage_began
        expires = known.lease_expires_at
        if began is None or expires is None:
            return False
        return expires <= began or self.router.stalled_at(expires)

    def _gone(self, run_id: str) -> bool:
        """Whether a run the fallback lacks is gone: one executing here that was claimed
        from the fallback, of a thread it still holds all of (born in the outage),
        deleted with its thread or alone. The primary has no copy of it to go on from:
        it is missing, as the primary would answer, and its executor purges what it
        writes after (`RunExecutor._purge_if_deleted`)."""
        known = self._executing.get(run_id)
        return known is not None and run_id in self._held and self.router.is_local(known.thread_id)

    def _drop(self, run_id: str) -> None:
        """This process executes the run no longer."""
        self._executing.pop(run_id, None)
        self._claimed_by.pop(run_id, None)
        self._unended.pop(run_id, None)
        self._held.discard(run_id)

    def _lose(self, run_id: str, known: RunRecord) -> None:
        """Its lease is not this process's (an outage's renewal found it so): the run is
        executed here no longer, and its copy is kept until the recovery, for reads of
        the run and a cancel asked here (journalled for whoever holds it)."""
        self._adopted[run_id] = known
        self._drop(run_id)

    def _adopt(self, run_id: str, **fields: Any) -> RunRecord | None:
        """Apply a change to a run in flight since before the outage (in memory)."""
        known = self._known(run_id)
        if known is None:
            return None
        changed = changed_run(known, fields)
        self._adopted[run_id] = changed
        if run_id in self._executing:
            self._executing[run_id] = changed
        return changed

    def _owner(self, run_id: str, what: str) -> str:
        """The executor that claimed a run in flight: the lease its journalled changes
        and end apply under (none known: refused, never journalled with no lease check)."""
        owner = self._claimed_by.get(run_id) or self._unended.get(run_id)
        if owner is None:
            raise self.router.unavailable(what)
        return owner

    def _seen(self, records: Sequence[RunRecord], *, claimed_by: str | None = None) -> None:
        """Runs as the primary answered: those claimed (by `claimed_by`) or executing here."""
        for record in records:
            if claimed_by is not None:
                self._claimed_by[record.run_id] = claimed_by
                self._unended.pop(record.run_id, None)
            if claimed_by is not None or record.run_id in self._executing:
                self._executing[record.run_id] = record


async def _stored_to_its_end(degraded: Callable[[], Awaitable[T]]) -> T:
    """A write of an outage, stored on the fallback then journalled (`degraded`), run to
    its end even when its caller is cancelled meanwhile, which then stops: stored but
    not journalled (a thread created, a run started, a cancel requested), it would
    stay in the fallback, never copied back."""
    result, cancelled = await to_its_end(degraded())
    if cancelled:  # stored and journalled: now the caller stops
        raise asyncio.CancelledError
    return result
