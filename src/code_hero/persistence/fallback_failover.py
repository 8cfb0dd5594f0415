"""Failing over: what a failed call says of its database, and the switch it makes.

`RouterFailover` judges a backend's error (`outage`): "down" fails the slot
over to the next one (`fail`, the outage's first log line), "busy" (a saturated
pool whose database still answers its probe) raises UNAVAILABLE with nothing
failed over, anything else is the call's own. `on_primary` wraps a call that
needs the primary alone; `probe` is the health check's look at one slot. Part
of `FallbackRouter`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Literal, TypeVar

from code_hero.persistence import clock
from code_hero.persistence.contention import mark_store
from code_hero.persistence.fallback_state import RouterState, Tables, log
from code_hero.persistence.slots import BackendSlot, close_quietly, probe_timeout
from code_hero.persistence.sqlitefiles import DatabaseFileMoved
from code_hero.persistence.unreachable import (
    background_level,
    is_backend_error,
    is_missing_table,
    is_pool_timeout,
)

R = TypeVar("R")
__all__ = ["Outage", "RouterFailover"]

Outage = Literal["down", "busy"]  # what a failed call says of its database (`outage`)


class RouterFailover(RouterState):
    """Judging a backend's errors and failing a slot over (part of `FallbackRouter`)."""

    async def outage(self, slot: BackendSlot, exc: BaseException) -> Outage | None:
        """What `exc` says of the slot's database: "down" (it cannot be reached), "busy"
        (it answers, but its pool is saturated), or None (no outage: the call's own error).

        A pool timeout alone does not say down when the pool has every connection it
        may open (a saturated pool raises it too): the slot's probe, on a connection
        of its own, decides. A pool short of connections that times out could not
        open them (they are being replaced): down, as any other unreachable database.

        Every error of a store's call passes here (`fail_if_down`, `touch`, recovery):
        it is marked as the store's (`contention.from_store`), whatever the verdict.
        """
        mark_store(exc)
        if is_missing_table(exc):
            tables = await self._lacks_tables(slot)
            if tables == "unreachable":
                self._abandon_calls(slot)
            return None if tables == "there" else "down"
        if not is_backend_error(exc):
            return None
        if is_pool_timeout(exc) and slot.backend is not None and slot.backend.pool_saturated():
            if await self._answers(slot):
                return "busy"
            self._abandon_calls(slot)
        return "down"

    async def _lacks_tables(self, slot: BackendSlot) -> Tables:
        """Whether the slot's database lacks tables of ours ("missing": dropped and
        recreated under us, down until the probe makes them again, in
        `PostgresBackend.probe`), or could not say ("unreachable": down, as for the
        probe, whose bound it has).

        Asked on a connection of its own, not the pool's: a call's own undefined_table
        on a saturated pool would wait out pool_timeout, and the pool's timeout would
        read as down. One check serves every call that asks meanwhile (as `_answers`)."""
        if slot.backend is None:
            return "there"
        return await _one_in_flight(
            self._checking_tables, slot.role, lambda: self._check_tables(slot)
        )

    async def _check_tables(self, slot: BackendSlot) -> Tables:
        assert slot.backend is not None
        seconds = probe_timeout(slot.config)
        try:
            missing = await self.calls.run(
                slot.backend.missing_tables(), seconds, f"{slot.kind} table check"
            )
        except Exception as exc:
            return "unreachable" if is_backend_error(exc) else "there"
        return "missing" if missing else "there"

    def background_level(self, exc: BaseException) -> int:
        """The level a background loop on the primary (webhook claims, the bus's
        notifications) logs `exc` at: DEBUG for an outage's, WARNING for a busy pool
        while the primary serves (`unreachable.background_level`)."""
        backend = self.primary.backend
        saturated = backend is not None and backend.pool_saturated()
        return background_level(exc, serving=self.serving, saturated=saturated)

    async def fail_if_down(
        self, slot: BackendSlot, exc: BaseException, what: str = "this request"
    ) -> bool:
        """Whether `exc` means the slot's database is down: then the slot is failed over.
        A saturated pool raises UNAVAILABLE "busy" instead, and nothing fails over.
        `outage` marks `exc` as the store's."""
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

    async def answers(self, slot: BackendSlot) -> bool:
        """Whether the slot answers a probe on a connection of its own now."""
        return await self._answers(slot)

    async def _answers(self, slot: BackendSlot) -> bool:
        """Whether the slot answers its probe now. One probe serves every call that
        asks meanwhile: a saturated pool times many out at once, and a connection
        each would add to the load."""
        return await _one_in_flight(self._confirming, slot.role, lambda: self._probe_answers(slot))

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
        if slot.backend is not None:
            # Calls waiting for one of its connections would wait out the pool's
            # timeout; none has sent anything, so each goes on on the next slot now,
            # and so does each checkout until a probe answers. Whether it serves or
            # not: a primary that went again before the copy-back switched back (its
            # drain, on the pool `reconnect` opened) is as unreachable.
            # (Calls on a lent connection are cut only on a probe's word: `probe`.)
            slot.backend.abandon_waits()
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
            slot.outage_began()
            self.degraded_since = clock.now()
            self._outage_began = self.primary.answered_at or self.degraded_since
            # Threads kept after the last recovery (a quarantined entry) are the
            # primary's in this outage: it took their writes while it served, so the
            # fallback no longer holds all of one, nor its newest checkpoints.
            self.local_threads.clear()
            self.fallback_threads.clear()
            self.uncarried_marks.clear()
            self.save_outage()
        if self.adopted:  # a dead replica's file: it serves nobody, its writes wait
            log.warning(
                "adopted fallback file %s: the database %s failed (%s) while its writes "
                "were copied; the rest waits in the file, copied once it answers",
                self.file_name,
                slot.config.describe(),
                slot.last_error,
            )
            return
        target = "no checkpointing" if nxt is None else self.slots[nxt].label
        # The one line an outage logs when it starts (requests answer UNAVAILABLE quietly).
        log.warning("%s backend failed (%s); switching to %s", slot.label, slot.last_error, target)

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
            if isinstance(exc, DatabaseFileMoved) and slot.backend is not None:
                await self._reopen_moved(slot)
            return False
        return True

    @staticmethod
    async def _reopen_moved(slot: BackendSlot) -> None:
        """The slot's connection serves files that left their path: save what only it
        holds, close it, and let the next probe open the database at the path. Saving
        may fail (the folder gone too: an unmounted disk); the connection, the only way
        left to that data, then stays open and the next probe tries again."""
        assert slot.backend is not None
        try:
            await slot.backend.save_moved()
        except Exception as exc:
            log.log(
                logging.ERROR if slot.sync_stopped(exc) else logging.DEBUG,
                "could not save the moved files of %s (%s): its connection is kept and "
                "the next probe tries again",
                slot.backend.description,
                exc,
            )
            return
        backend, slot.backend = slot.backend, None
        await close_quietly(backend)

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


async def _one_in_flight(
    flights: dict[str, asyncio.Future[R]], role: str, start: Callable[[], Awaitable[R]]
) -> R:
    """The answer of `start()` for `role`, one call in flight per role: a caller that
    comes meanwhile waits for the same one (shielded: a caller cancelled only stops
    waiting), and the next caller after it ends starts another."""
    task = flights.get(role)
    if task is None:
        task = asyncio.ensure_future(start())
        flights[role] = task

        def done(ended: asyncio.Future[R]) -> None:
            if flights.get(role) is ended:
                del flights[role]

        task.add_done_callback(done)
    return await asyncio.shield(task)
