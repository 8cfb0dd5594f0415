"""Deleting a thread's checkpoints through an outage, and a deletion's marks.

`RouterDeletes` deletes a thread's checkpoints from every slot that may hold
them (`delete_thread`), or on the primary in one step when nothing else holds
the thread (`purge_idle_thread`, `purge_orphan`). A deletion marked in an
outage on a fallback's row of a thread kept across the recovery has its mark
carried to the primary (`_carry_mark`, `_carry_marks`); while the primary
refuses it, runs on the thread are refused (`mark_waits`). Part of
`FallbackRouter`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from code_hero.persistence.backends import Backend
from code_hero.persistence.entries import DeleteThread
from code_hero.persistence.fallback_failover import RouterFailover
from code_hero.persistence.fallback_state import log
from code_hero.persistence.records import Registry, ThreadPurge, ThreadRecord
from code_hero.persistence.recovery import step_timeout
from code_hero.persistence.unreachable import is_backend_error

__all__ = ["RouterDeletes"]

R = TypeVar("R")


class RouterDeletes(RouterFailover):
    """Deleting threads' checkpoints, and carrying a deletion's marks (part of
    `FallbackRouter`)."""

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
            if self.serving:  # in an outage, with its deletion below, in one commit
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
                # Its entries and the deletion that replaces them, in one commit of the
                # journal's file: a kill in between left neither (what of the thread a
                # copy-back cut short had put in the primary stayed there).
                self.journal.drop_thread_locked(thread_id, then=DeleteThread(thread_id))
                return None if marked is None else removed
            self.drop_noted(thread_id)
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
